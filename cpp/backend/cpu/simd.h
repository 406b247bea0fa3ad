// Vector kernels for the CPU ops: fp16 weights/cache against fp32 activations, fp32 accumulation.
// AVX2+FMA+F16C when the CPU has them (checked once at run time), plain loops otherwise; both
// give the same results up to fp32 summation order.
#pragma once

#include <cstdint>

#include "core/half.h"

namespace kvinfer::simd {

bool has_avx2();  // AVX2, FMA and F16C are all present

// sum_i a[i] * b[i]
float dot_f16_f32(const half_t* a, const float* b, int64_t n);
float dot_f32(const float* a, const float* b, int64_t n);
// out[r * out_stride + c] = dot_f32(a + r * a_stride, b + c * b_stride, n) for r < rows, c < cols,
// bit for bit, with each operand loaded once per block (register-blocked for 4 x 2 and 4 x 1)
void dot_block_f32(const float* a, int64_t a_stride, int rows, const float* b, int64_t b_stride, int cols,
                   int64_t n, float* out, int64_t out_stride);
// y[i] = y[i] * scale + p * v[i]
void scale_axpy_f16(float scale, float p, const half_t* v, float* y, int64_t n);
// out[r] = dot_f16_f32(rows[r], x, n) for r < count, bit for bit (rows anywhere: a KV cache's
// positions through a block table)
void dot_rows_f16_f32(const half_t* const* rows, int count, const float* x, int64_t n, float* out);
// y[i] += p[r] * rows[r][i] for r = 0, 1, ..., count - 1 in that order (one FMA each)
void axpy_rows_f16(const float* p, const half_t* const* rows, int count, float* y, int64_t n);
void f16_to_f32(const half_t* src, float* dst, int64_t n);
void f32_to_f16(const float* src, half_t* dst, int64_t n);

}  // namespace kvinfer::simd
