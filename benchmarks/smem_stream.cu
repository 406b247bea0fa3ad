// Shared-memory streaming ceiling on the GPU: how fast can resident blocks stream disjoint regions
// of two arrays (like the K and V of decode attention) into shared memory? Variants: cp.async tiles
// of several sizes and stage counts, with and without the zero-fill form and padded rows, and 1-D
// bulk (TMA) copies completing on an mbarrier. Prints GB/s per variant.
//   nvcc -std=c++17 -O3 -arch=sm_90 -o smem_stream benchmarks/smem_stream.cu && ./smem_stream
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
__device__ __forceinline__ void cp16(void* s, const void* g) {
  unsigned d = (unsigned)__cvta_generic_to_shared(s);
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(d), "l"(g));
}
__device__ __forceinline__ void cp16z(void* s, const void* g, int n) {
  unsigned d = (unsigned)__cvta_generic_to_shared(s);
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(g), "r"(n));
}
template <int STAGES, int TILE, int NS, int MODE = 0>
__global__ void __launch_bounds__(128) stream_cp(const char* a, const char* b, size_t per_block, int* sink) {
  extern __shared__ __align__(16) char sm[];
  const char* src[2] = {a + blockIdx.x * per_block, b + blockIdx.x * per_block};
  const int tiles = per_block / TILE;
  auto issue = [&](int t) {
    if (t < tiles) {
      for (int s = 0; s < NS; ++s)
#pragma unroll
        for (int i = 0; i < TILE / 16 / 128; ++i) {
          int off = (threadIdx.x + i * 128) * 16;
          int soff = MODE == 2 ? off + (off / 256) * 16 : off;  // padded 272-byte rows
          if (MODE >= 1) cp16z(sm + ((t % STAGES) * NS + s) * (TILE + TILE / 16) + soff, src[s] + size_t(t) * TILE + off, 16);
          else cp16(sm + ((t % STAGES) * NS + s) * TILE + off, src[s] + size_t(t) * TILE + off);
        }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  for (int t = 0; t < STAGES - 1; ++t) issue(t);
  int acc = 0;
  for (int t = 0; t < tiles; ++t) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2));
    __syncthreads();
    issue(t + STAGES - 1);
    acc += sm[((t % STAGES) * NS) * TILE + threadIdx.x * 16];
  }
  if (acc == 123456789) *sink = acc;
}
// TMA 1D bulk copies, one per stream per tile, completion on an mbarrier per stage.
template <int STAGES, int TILE, int NS>
__global__ void __launch_bounds__(128) stream_bulk(const char* a, const char* b, size_t per_block, int* sink) {
  extern __shared__ __align__(16) char sm[];
  __shared__ __align__(8) uint64_t bar[STAGES];
  const char* src[2] = {a + blockIdx.x * per_block, b + blockIdx.x * per_block};
  const int tiles = per_block / TILE;
  if (threadIdx.x == 0)
    for (int s = 0; s < STAGES; ++s) {
      unsigned ba = (unsigned)__cvta_generic_to_shared(&bar[s]);
      asm volatile("mbarrier.init.shared.b64 [%0], 1;\n" ::"r"(ba));
    }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::);
  __syncthreads();
  auto issue = [&](int t) {
    if (t < tiles && threadIdx.x == 0) {
      const int st = t % STAGES;
      unsigned ba = (unsigned)__cvta_generic_to_shared(&bar[st]);
      asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;\n" ::"r"(ba), "r"(TILE * NS));
      for (int s = 0; s < NS; ++s) {
        unsigned d = (unsigned)__cvta_generic_to_shared(sm + (st * NS + s) * TILE);
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                     ::"r"(d), "l"(src[s] + size_t(t) * TILE), "r"(TILE), "r"(ba) : "memory");
      }
    }
  };
  for (int t = 0; t < STAGES - 1; ++t) issue(t);
  int acc = 0;
  for (int t = 0; t < tiles; ++t) {
    const int st = t % STAGES;
    unsigned ba = (unsigned)__cvta_generic_to_shared(&bar[st]);
    const unsigned parity = (t / STAGES) & 1;
    asm volatile("{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared.b64 p, [%0], %1;\n @!p bra W;\n}\n" ::"r"(ba), "r"(parity));
    __syncthreads();
    issue(t + STAGES - 1);
    acc += sm[(st * NS) * TILE + threadIdx.x * 16];
  }
  if (acc == 123456789) *sink = acc;
}
template <typename K>
void bench(const char* name, K kernel, int smem, const char* a, const char* b, size_t total, int NS, int* sink) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  int per_sm = 0; cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, smem);
  int grid = 132 * per_sm;
  size_t per_block = total / grid / 65536 * 65536;
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  std::vector<float> t;
  for (int r = 0; r < 15; ++r) {
    cudaEventRecord(e0); kernel<<<grid, 128, smem>>>(a, b, per_block, sink); cudaEventRecord(e1); cudaEventSynchronize(e1);
    float ms; cudaEventElapsedTime(&ms, e0, e1); t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  double bytes = double(per_block) * grid * NS;
  printf("%-28s blocks/SM %d  %8.1f us  %6.0f GB/s  %s\n", name, per_sm, t[7] * 1e3, bytes / (t[7] * 1e-3) / 1e9, cudaGetErrorString(cudaGetLastError()));
}
int main() {
  size_t total = size_t(1) << 30;  // per stream
  char *a, *b; int* sink; cudaMalloc(&a, total); cudaMalloc(&b, total); cudaMalloc(&sink, 4);
  cudaMemset(a, 1, total); cudaMemset(b, 2, total);
  bench("cp 2x16K st3", stream_cp<3, 16384, 2>, 3 * 2 * 16384, a, b, total, 2, sink);
  bench("cpz 2x16K st3", stream_cp<3, 16384, 2, 1>, 3 * 2 * 17408, a, b, total, 2, sink);
  bench("cpz pad 2x16K st3", stream_cp<3, 16384, 2, 2>, 3 * 2 * 17408, a, b, total, 2, sink);
  bench("cp 2x16K st3", stream_cp<3, 16384, 2>, 3 * 2 * 16384, a, b, total, 2, sink);
  bench("cpz pad 2x4K st3 (warp-like)", stream_cp<3, 4096, 2, 2>, 3 * 2 * 4352, a, b, total, 2, sink);
  bench("cpz pad 2x32K st3", stream_cp<3, 32768, 2, 2>, 3 * 2 * 34816, a, b, total, 2, sink);
  bench("cp 1x32K st3", stream_cp<3, 32768, 1>, 3 * 32768, a, b, total, 1, sink);
  bench("cp 2x8K st6", stream_cp<6, 8192, 2>, 6 * 2 * 8192, a, b, total, 2, sink);
  bench("cp 2x8K st3", stream_cp<3, 8192, 2>, 3 * 2 * 8192, a, b, total, 2, sink);
  bench("cp 2x16K st2", stream_cp<2, 16384, 2>, 2 * 2 * 16384, a, b, total, 2, sink);
  bench("cp 2x32K st3", stream_cp<3, 32768, 2>, 3 * 2 * 32768, a, b, total, 2, sink);
  bench("bulk 2x16K st3", stream_bulk<3, 16384, 2>, 3 * 2 * 16384, a, b, total, 2, sink);
  bench("bulk 2x16K st4", stream_bulk<4, 16384, 2>, 4 * 2 * 16384, a, b, total, 2, sink);
  bench("bulk 2x8K st6", stream_bulk<6, 8192, 2>, 6 * 2 * 8192, a, b, total, 2, sink);
  bench("bulk 1x32K st3", stream_bulk<3, 32768, 1>, 3 * 32768, a, b, total, 1, sink);
  bench("bulk 2x16K st6", stream_bulk<6, 16384, 2>, 6 * 2 * 16384, a, b, total, 2, sink);
  bench("bulk 2x4K st8", stream_bulk<8, 4096, 2>, 8 * 2 * 4096, a, b, total, 2, sink);
}
