#include "backend/cpu/simd.h"

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

// One loop for fp16 and fp32 left operands: the same accumulators in the same order, so a dot
// product over converted fp16 values equals the one over the fp16 values bit for bit (the matmul's
// batch invariance rests on it).
template <class T>
KVINFER_AVX2 static float dot_avx2(const T* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(load8(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += to_float(a[i]) * b[i];
  return s;
}

KVINFER_AVX2 static void scale_axpy_f16_avx2(float scale, float p, const half_t* v, float* y,
                                             int64_t n) {
  const __m256 vs = _mm256_set1_ps(scale), vp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vp, load_f16(v + i), _mm256_mul_ps(vs, _mm256_loadu_ps(y + i))));
  for (; i < n; ++i) y[i] = y[i] * scale + p * half_to_float(v[i]);
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

void scale_axpy_f16(float scale, float p, const half_t* v, float* y, int64_t n) {
#if KVINFER_X86
  if (has_avx2()) return scale_axpy_f16_avx2(scale, p, v, y, n);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = y[i] * scale + p * half_to_float(v[i]);
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
