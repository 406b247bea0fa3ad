#include "backend/cpu/simd.h"

#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#define KVINFER_X86 1
#include <immintrin.h>
#endif

namespace kvinfer::simd {

static inline float to_float(half_t h) { return half_to_float(h); }
static inline float to_float(float f) { return f; }

#if KVINFER_X86
#define KVINFER_AVX2 __attribute__((target("avx2,fma,f16c")))

static bool detect_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool has_avx2() {
  static const bool yes = detect_avx2();
  return yes;
}

KVINFER_AVX2 static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KVINFER_AVX2 static inline __m256 load_f16(const half_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

KVINFER_AVX2 static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
KVINFER_AVX2 static inline __m256 load8(const half_t* p) { return load_f16(p); }

// The last step of every dot product: the two accumulators folded, then the columns past the
// last 8 one by one; shared, so every caller folds the same way (CpuOps.MatmulRowsDoNotDependOn-
// TheBatch checks the bits, tail included). Inlined: a call passing __m256 by value costs more
// than the fold (a noinline version halved prefill and decode speed).
template <class T>
KVINFER_AVX2 static inline float finish(__m256 acc0, __m256 acc1, const T* a, const float* b,
                                                         int64_t i, int64_t n) {
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += to_float(a[i]) * b[i];
  return s;
}

// One loop for fp16 and fp32 left operands: the same accumulators in the same order, so a dot
// product over converted fp16 values equals the one over the fp16 values bit for bit (the matmul's
// batch invariance rests on it). acc0 takes the 8-column groups at 0, 16, 32, ... and a last odd
// group; acc1 those at 8, 24, ...
template <class T>
KVINFER_AVX2 static float dot_avx2(const T* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(load8(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), acc0);
  return finish(acc0, acc1, a, b, i, n);
}

// The dot products of R rows of `a` with C rows of `b`, each equal bit for bit to dot_avx2's: per
// pair the same FMAs into the same two accumulators. acc0's groups are one pass over the columns
// and acc1's another, so a pass holds R x C accumulators and loads each operand once per R (or C)
// products instead of once per product.
template <int R, int C>
KVINFER_AVX2 static void dot_block_avx2(const float* a, int64_t a_stride, const float* b, int64_t b_stride,
                                        int64_t n, float* out, int64_t out_stride) {
  const int64_t pairs = n / 16 * 16;
  const bool odd = n - pairs >= 8;
  __m256 acc[2][R][C];
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[h][r][c] = _mm256_setzero_ps();
  auto group = [&](__m256 (&into)[R][C], int64_t i) KVINFER_AVX2 {
    __m256 av[R];
    for (int r = 0; r < R; ++r) {
      av[r] = _mm256_loadu_ps(a + r * a_stride + i);
      // in a register: folded into each FMA as a memory operand, a row would be loaded once per
      // column of b instead of once (R + C loads a group instead of R * C + C)
      asm("" : "+x"(av[r]));
    }
    for (int c = 0; c < C; ++c) {
      const __m256 bv = _mm256_loadu_ps(b + c * b_stride + i);
      for (int r = 0; r < R; ++r) into[r][c] = _mm256_fmadd_ps(av[r], bv, into[r][c]);
    }
  };
  for (int64_t i = 0; i < pairs; i += 16) group(acc[0], i);
  if (odd) group(acc[0], pairs);
  for (int64_t i = 8; i < pairs; i += 16) group(acc[1], i);
  const int64_t tail = pairs + 8 * odd;
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      out[r * out_stride + c] = finish(acc[0][r][c], acc[1][r][c], a + r * a_stride, b + c * b_stride, tail, n);
}

KVINFER_AVX2 static void scale_axpy_f16_avx2(float scale, float p, const half_t* v, float* y,
                                             int64_t n) {
  const __m256 vs = _mm256_set1_ps(scale), vp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vp, load_f16(v + i), _mm256_mul_ps(vs, _mm256_loadu_ps(y + i))));
  for (; i < n; ++i) y[i] = y[i] * scale + p * half_to_float(v[i]);
}

KVINFER_AVX2 static void dot_rows_avx2(const half_t* const* rows, int count, const float* x, int64_t n, float* out) {
  for (int r = 0; r < count; ++r) out[r] = dot_avx2(rows[r], x, n);
}

// y stays in registers over all rows, 64 columns (8 vectors) at a time.
KVINFER_AVX2 static void axpy_rows_avx2(const float* p, const half_t* const* rows, int count, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m256 acc[8];
    for (int u = 0; u < 8; ++u) acc[u] = _mm256_loadu_ps(y + i + 8 * u);
    for (int r = 0; r < count; ++r) {
      const __m256 pr = _mm256_set1_ps(p[r]);
      for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(pr, load_f16(rows[r] + i + 8 * u), acc[u]);
    }
    for (int u = 0; u < 8; ++u) _mm256_storeu_ps(y + i + 8 * u, acc[u]);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 acc = _mm256_loadu_ps(y + i);
    for (int r = 0; r < count; ++r) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[r]), load_f16(rows[r] + i), acc);
    _mm256_storeu_ps(y + i, acc);
  }
  for (; i < n; ++i)
    for (int r = 0; r < count; ++r) y[i] = std::fma(p[r], half_to_float(rows[r][i]), y[i]);
}

KVINFER_AVX2 static void f16_to_f32_avx2(const half_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16(src + i));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}

KVINFER_AVX2 static void f32_to_f16_avx2(const float* src, half_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}
#else
bool has_avx2() { return false; }
#endif

template <class T>
static float dot(const T* a, const float* b, int64_t n) {
#if KVINFER_X86
  if (has_avx2()) return dot_avx2(a, b, n);
#endif
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += to_float(a[i]) * b[i];
  return s;
}

float dot_f16_f32(const half_t* a, const float* b, int64_t n) { return dot(a, b, n); }
float dot_f32(const float* a, const float* b, int64_t n) { return dot(a, b, n); }

void dot_block_f32(const float* a, int64_t a_stride, int rows, const float* b, int64_t b_stride, int cols,
                   int64_t n, float* out, int64_t out_stride) {
#if KVINFER_X86
  if (has_avx2() && rows == 4 && cols == 2) return dot_block_avx2<4, 2>(a, a_stride, b, b_stride, n, out, out_stride);
  if (has_avx2() && rows == 4 && cols == 1) return dot_block_avx2<4, 1>(a, a_stride, b, b_stride, n, out, out_stride);
#endif
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) out[r * out_stride + c] = dot(a + r * a_stride, b + c * b_stride, n);
}

void scale_axpy_f16(float scale, float p, const half_t* v, float* y, int64_t n) {
#if KVINFER_X86
  if (has_avx2()) return scale_axpy_f16_avx2(scale, p, v, y, n);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = y[i] * scale + p * half_to_float(v[i]);
}

void dot_rows_f16_f32(const half_t* const* rows, int count, const float* x, int64_t n, float* out) {
#if KVINFER_X86
  if (has_avx2()) return dot_rows_avx2(rows, count, x, n, out);
#endif
  for (int r = 0; r < count; ++r) out[r] = dot(rows[r], x, n);
}

void axpy_rows_f16(const float* p, const half_t* const* rows, int count, float* y, int64_t n) {
#if KVINFER_X86
  if (has_avx2()) return axpy_rows_avx2(p, rows, count, y, n);
#endif
  for (int64_t i = 0; i < n; ++i)
    for (int r = 0; r < count; ++r) y[i] = std::fma(p[r], half_to_float(rows[r][i]), y[i]);
}

void f16_to_f32(const half_t* src, float* dst, int64_t n) {
#if KVINFER_X86
  if (has_avx2()) return f16_to_f32_avx2(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

void f32_to_f16(const float* src, half_t* dst, int64_t n) {
#if KVINFER_X86
  if (has_avx2()) return f32_to_f16_avx2(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

}  // namespace kvinfer::simd
