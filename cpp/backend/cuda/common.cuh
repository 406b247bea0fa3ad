// Device helpers shared by the kernels: warp/block reductions, tensor-core MMA, atomics.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "core/cuda_check.h"

namespace kvinfer::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats; blockDim.x is a
// multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// c += a (16x16, row-major) * b (16x8, column-major); fp16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// *p += v, returning the old value. Release: what this block wrote before (ordered by a barrier) is
// visible to whoever sees the new value; acquire: the block that reads a final count sees what
// every other block wrote before its add (its readers are ordered after by the next barrier).
__device__ __forceinline__ int atomic_add_acq_rel(int* p, int v) {
  int old;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// The values of two fused epilogues, written once so that the fused kernels and the kernels of
// their own give the same bits (explicit roundings: no contraction left to the compiler).
// silu(g) * u of fp16 values g, u.
__device__ __forceinline__ float silu_times(float g, float u) { return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u); }
// The cosine and sine of RoPE's angle position * inv_freq[i] (x: cosine, y: sine).
__device__ __forceinline__ float2 rope_angle(int position, float inv_freq) {
  float s, c;
  sincosf(__fmul_rn(static_cast<float>(position), inv_freq), &s, &c);
  return make_float2(c, s);
}
// The pair (a, b) = (x[i], x[i + d / 2]) rotated by the angle whose cosine and sine are cs.
__device__ __forceinline__ __half2 rope_rotate(float a, float b, float2 cs) {
  const float c = cs.x, s = cs.y;
  return __floats2half2_rn(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)), __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
}
// RoPE of the pair (a, b) at angle position * inv_freq[i].
__device__ __forceinline__ __half2 rope_rotate(float a, float b, int position, float inv_freq) {
  return rope_rotate(a, b, rope_angle(position, inv_freq));
}

// Programmatic dependent launch (Hopper): a kernel launched with launch_dependent() may start
// while the kernel before it drains. It must call pdl_wait() before it reads anything that kernel
// (or an earlier one) wrote; pdl_allow_next() lets the kernel after it start early in turn. Before
// the wait a kernel may only read what no kernel of the step writes (weights).
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_allow_next() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether the current device runs dependent launches (compute capability 9.0 or later).
bool pdl_supported();

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch where the
// device supports it.
template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = pdl_supported() ? 1 : 0;
  KVINFER_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace kvinfer::cuda
