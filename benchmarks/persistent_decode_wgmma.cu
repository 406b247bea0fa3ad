// The persistent batch-1 step of benchmarks/persistent_decode.cu with the consumers as warpgroup
// MMAs (docs/dev/step-runtime-notes.md, run 22): there, CUDA-core dot products capped the step at
// 0.92 ms on an H200 while the weight copies alone took 0.54. Here each block has one producer warp
// (1-D bulk copies of 32 KB chunks into 5 shared-memory stages) and one consumer warpgroup that
// multiplies each chunk as the skinny GEMM does (sm90/skinny_gemm_wgmma.cu): 64 weight rows are the
// A operand of m64n8k16 wgmma, read from shared memory in the 128-byte swizzled layout, and the
// step's one input row is column 0 of the B operand (columns 1-7 are zeros). Chunks are prepacked
// on the host in that layout (a product kernel would load the same bytes by 2-D TMA).
//
// Work items: (op, 64-row tile, K range). Ranges of one tile are summed in range order by the last
// of them to finish (a counter per tile), which then finishes the rows (qkv: fp16; o, down: into
// the fp32 residual; gate/up, packed 32 gate + 32 up rows a tile: silu(gate) * up; LM head: argmax)
// and counts the op's tile done; an op waits for its predecessor's count. Attention (32 query
// heads over 8 KV heads, 256 cached tokens + the new one) runs on CUDA cores.
//
// Runs: the persistent kernel; the same kernel launched once per op (81 launches in a graph: the
// kernel boundaries instead of the counters, the same bits); no waits (wrong numbers: what the
// consumers allow); copies only (the producer's ceiling). Checked against a CPU reference of the
// step (relative error and the argmax) and bit for bit between the first two.
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Xcompiler -fopenmp -Icpp -o persistent_decode_wgmma \
//     benchmarks/persistent_decode_wgmma.cu && ./persistent_decode_wgmma
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "backend/cuda/sm90/wgmma.cuh"

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      return 1;                                                                      \
    }                                                                                \
  } while (0)

constexpr int kHidden = 2048, kInter = 8192, kQHeads = 32, kKVHeads = 8, kHeadDim = 64, kLayers = 16;
constexpr int kVocab = 128256, kCtx = 256;
constexpr int kQKV = (kQHeads + 2 * kKVHeads) * kHeadDim;  // 3072
constexpr int kTileRows = 64;                              // an MMA's M
constexpr int kBoxCols = 64;                               // a 128-byte swizzled row
constexpr int kChunkCols = 256;                            // 4 boxes: 64 x 256 fp16 = 32 KB
constexpr int kChunkBytes = kTileRows * kChunkCols * 2;
constexpr int kStages = 5;
constexpr int kMaxRange = 2048;                            // most K columns of a work item
constexpr int kConsumers = 128, kThreads = kConsumers + 32;

enum OpKind { kQkvOp, kAttnOp, kOOp, kGateUpOp, kDownOp, kLmOp };
constexpr int kNumOps = kLayers * 5 + 1;

struct Op {
  int kind;
  int n, k;           // output rows, input columns (attention: n = query heads)
  int ranges;         // K ranges a tile is split into
  int layer;
  const __half* w;    // packed [tile][range][chunk][box][64 rows][128 B swizzled]
  const __half* norm; // RMSNorm weight of the input, or null (an fp16 activation)
  float* partial;     // [ranges][n] (ranges > 1)
  int* tile_count;    // [tiles] ranges finished
  __host__ __device__ int tiles() const { return kind == kAttnOp ? n : (n + kTileRows - 1) / kTileRows; }
  __host__ __device__ int items() const { return kind == kAttnOp ? n : tiles() * ranges; }
  __host__ __device__ int range_cols() const { return k / ranges; }
  __host__ __device__ int chunks() const { return range_cols() / kChunkCols; }
};

struct Step {
  Op ops[kNumOps];
  int first_op, last_op;  // the ops this launch runs
  float* x;               // [kHidden] residual stream
  __half *qkv, *attn, *h;
  const __half *kcache, *vcache;  // [kLayers][kKVHeads][kCtx][kHeadDim]
  int* done;              // [kNumOps] tiles finished
  unsigned long long* best;
  int waits, copy_only;
};

// ---- PTX: the engine's wrappers (cpp/backend/cuda/sm90/wgmma.cuh), and what they lack ------------
using namespace kvinfer::cuda;
// A 1-D bulk copy of `bytes` (a multiple of 16) into shared memory, completing on `bar`.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void sync_consumers() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }
__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// ---- the step's pieces (consumer threads) ---------------------------------------------------------
struct Smem {
  __half* ring;     // [kStages][32 KB]
  __half* b;        // [kMaxRange / 64 boxes][8 rows][64], swizzled; only row 0 is written
  __half* input;    // [kInter] the op's input row, fp16
  float* scratch;   // [2048]
};

// The op's input as fp16: RMSNorm(x) (fp32 math, rounded once) or the fp16 activation.
__device__ void stage_input(const Step& s, const Op& op, const Smem& m) {
  const int t = threadIdx.x;
  if (op.norm) {
    float ss = 0.f;
    for (int k = t; k < kHidden; k += kConsumers) {
      const float v = __ldcg(s.x + k);
      ss += v * v;
    }
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(~0u, ss, o);
    if (t % 32 == 0) m.scratch[t / 32] = ss;
    sync_consumers();
    const float total = m.scratch[0] + m.scratch[1] + m.scratch[2] + m.scratch[3];
    const float inv = rsqrtf(total / kHidden + 1e-5f);
    for (int k = t; k < kHidden; k += kConsumers)
      m.input[k] = __float2half(__ldcg(s.x + k) * inv * __half2float(op.norm[k]));
  } else {
    const __half* src = op.kind == kOOp ? s.attn : s.h;
    for (int k = t; k < op.k; k += kConsumers) m.input[k] = __ldcg(src + k);
  }
  sync_consumers();
}

// Columns [k0, k0 + cols) of the input into row 0 of the B boxes (row 0 of a swizzled box is
// stored as it is), visible to the MMAs.
__device__ void stage_b(const Smem& m, int k0, int cols) {
  for (int c = threadIdx.x; c < cols / 8; c += kConsumers) {  // 16-byte pieces
    const int box = c / 8, piece = c % 8;
    *reinterpret_cast<uint4*>(m.b + box * 512 + piece * 8) = *reinterpret_cast<const uint4*>(m.input + k0 + 8 * c);
  }
  fence_proxy_async();
  sync_consumers();
}

// The 64 rows' finished values (sums[64], shared) into the op's output.
__device__ void finish_rows(const Step& s, const Op& op, int tile, const float* sums, unsigned long long* best) {
  const int t = threadIdx.x, r = tile * kTileRows + t;
  if (op.kind == kQkvOp && t < kTileRows) s.qkv[r] = __float2half(sums[t]);
  if ((op.kind == kOOp || op.kind == kDownOp) && t < kTileRows) s.x[r] = __ldcg(s.x + r) + sums[t];
  if (op.kind == kGateUpOp && t < kTileRows / 2) {
    const float g = __half2float(__float2half(sums[t])), u = __half2float(__float2half(sums[t + kTileRows / 2]));
    s.h[tile * (kTileRows / 2) + t] = __float2half(g / (1.f + __expf(-g)) * u);
  }
  if (op.kind == kLmOp && t == 0)
    for (int i = 0; i < kTileRows && tile * kTileRows + i < kVocab; ++i) {
      uint32_t bits = __float_as_uint(sums[i]);
      bits = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
      const unsigned long long key = (unsigned long long)bits << 32 | (0xFFFFFFFFu - (uint32_t)(tile * kTileRows + i));
      if (key > *best) *best = key;
    }
}

__device__ void signal(const Step& s, int o) {
  __threadfence();
  sync_consumers();
  if (threadIdx.x == 0) atomicAdd(s.done + o, 1);
}

// One query head's attention (4 warps; a lane holds two of the 64 dimensions).
__device__ void attention_head(const Step& s, const Op& op, int head, float* sm) {
  constexpr int kWarps = kConsumers / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, kvh = head / (kQHeads / kKVHeads);
  const int n = kCtx + 1;
  float* p = sm;
  float* red = sm + 512;
  float* part = sm + 512 + 32;
  const size_t base = ((size_t)op.layer * kKVHeads + kvh) * kCtx * kHeadDim;
  const __half2* newk = reinterpret_cast<const __half2*>(s.qkv + kHidden + kvh * kHeadDim);
  const __half2* newv = reinterpret_cast<const __half2*>(s.qkv + kHidden + kKVHeads * kHeadDim + kvh * kHeadDim);
  const float2 q = __half22float2(__ldcg(reinterpret_cast<const __half2*>(s.qkv + head * kHeadDim) + lane));
  float mx = -INFINITY;
#pragma unroll 4
  for (int j = warp; j < n; j += kWarps) {
    const __half2 k2 =
        j < kCtx ? reinterpret_cast<const __half2*>(s.kcache + base + (size_t)j * kHeadDim)[lane] : __ldcg(newk + lane);
    const float2 k = __half22float2(k2);
    float d = q.x * k.x + q.y * k.y;
    for (int o = 16; o; o >>= 1) d += __shfl_xor_sync(~0u, d, o);
    d *= 0.125f;
    if (lane == 0) p[j] = d;
    mx = fmaxf(mx, d);
  }
  if (lane == 0) red[warp] = mx;
  sync_consumers();
  mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
  sync_consumers();
  float l = 0.f;
  for (int j = threadIdx.x; j < n; j += kConsumers) l += (p[j] = __expf(p[j] - mx));
  for (int o = 16; o; o >>= 1) l += __shfl_xor_sync(~0u, l, o);
  if (lane == 0) red[warp] = l;
  sync_consumers();
  l = red[0] + red[1] + red[2] + red[3];
  float2 acc = make_float2(0.f, 0.f);
#pragma unroll 4
  for (int j = warp; j < n; j += kWarps) {
    const __half2 v2 =
        j < kCtx ? reinterpret_cast<const __half2*>(s.vcache + base + (size_t)j * kHeadDim)[lane] : __ldcg(newv + lane);
    const float2 v = __half22float2(v2);
    acc.x = fmaf(p[j], v.x, acc.x), acc.y = fmaf(p[j], v.y, acc.y);
  }
  part[warp * kHeadDim + 2 * lane] = acc.x, part[warp * kHeadDim + 2 * lane + 1] = acc.y;
  sync_consumers();
  if (threadIdx.x < kHeadDim) {
    float sum = 0.f;
    for (int w = 0; w < kWarps; ++w) sum += part[w * kHeadDim + threadIdx.x];
    s.attn[head * kHeadDim + threadIdx.x] = __float2half(sum / l);
  }
  sync_consumers();
}

__global__ void __launch_bounds__(kThreads, 1) persistent_step(const __grid_constant__ Step s) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzled boxes: 1024-aligned
  Smem m;
  m.ring = reinterpret_cast<__half*>(smem);
  m.b = reinterpret_cast<__half*>(smem + kStages * kChunkBytes);
  m.input = m.b + (kMaxRange / kBoxCols) * 8 * kBoxCols;
  m.scratch = reinterpret_cast<float*>(m.input + kInter);
  __shared__ __align__(8) uint64_t full[kStages], empty[kStages];
  __shared__ int last;
  const int G = gridDim.x;
  if (threadIdx.x == 0) {
    // a stage goes back once every consumer thread's MMAs have read it (a warp's wgmma wait covers
    // its own share of the warpgroup's MMAs only)
    for (int i = 0; i < kStages; ++i) mbar_init(&full[i], 1), mbar_init(&empty[i], kConsumers);
    mbar_fence_init();
  }
  for (int i = threadIdx.x; i < (kMaxRange / kBoxCols) * 8 * kBoxCols / 8; i += blockDim.x)  // B's rows 1-7
    reinterpret_cast<uint4*>(m.b)[i] = make_uint4(0, 0, 0, 0);
  fence_proxy_async();  // the MMAs read them through the async proxy
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // producer: every chunk of this block's items, in order
    if (threadIdx.x == kConsumers) {
      int slot = 0;
      uint32_t phase = 0;
      for (int o = s.first_op; o < s.last_op; ++o) {
        const Op& op = s.ops[o];
        if (op.kind == kAttnOp) continue;
        for (int item = blockIdx.x; item < op.items(); item += G)
          for (int c = 0; c < op.chunks(); ++c) {
            mbar_wait(&empty[slot], phase ^ 1);
            mbar_arrive_expect_tx(&full[slot], kChunkBytes);
            bulk_load(reinterpret_cast<unsigned char*>(m.ring) + slot * kChunkBytes,
                      reinterpret_cast<const unsigned char*>(op.w) + ((size_t)item * op.chunks() + c) * kChunkBytes,
                      kChunkBytes, &full[slot]);
            if (++slot == kStages) slot = 0, phase ^= 1;
          }
      }
    }
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* sums = m.scratch + 1024;
  int slot = 0;
  uint32_t phase = 0;
  unsigned long long mine = 0;
  for (int o = s.first_op; o < s.last_op; ++o) {
    const Op& op = s.ops[o];
    if (blockIdx.x >= op.items()) continue;
    if (s.copy_only) {
      if (op.kind == kAttnOp) continue;
      for (int item = blockIdx.x; item < op.items(); item += G)
        for (int c = 0; c < op.chunks(); ++c) {
          mbar_wait(&full[slot], phase);
          mbar_arrive(&empty[slot]);
          if (++slot == kStages) slot = 0, phase ^= 1;
        }
      continue;
    }
    if (s.waits && o > s.first_op) {
      if (threadIdx.x == 0)
        while (load_acquire(s.done + o - 1) < s.ops[o - 1].tiles()) __nanosleep(32);
      sync_consumers();
    }
    if (op.kind == kAttnOp) {
      for (int head = blockIdx.x; head < op.n; head += G) {
        attention_head(s, op, head, m.scratch);
        signal(s, o);
      }
      continue;
    }
    stage_input(s, op, m);
    for (int item = blockIdx.x; item < op.items(); item += G) {
      const int tile = item / op.ranges, range = item % op.ranges, cols = op.range_cols();
      stage_b(m, range * cols, cols);
      float acc[1][4] = {};
      int prev = -1;
      for (int c = 0; c < op.chunks(); ++c) {
        mbar_wait(&full[slot], phase);
        const unsigned char* stage = reinterpret_cast<const unsigned char*>(m.ring) + slot * kChunkBytes;
        const unsigned char* b = reinterpret_cast<const unsigned char*>(m.b) + c * (kChunkCols / kBoxCols) * 1024;
        wgmma_fence();
#pragma unroll
        for (int box = 0; box < kChunkCols / kBoxCols; ++box)
#pragma unroll
          for (int kk = 0; kk < kBoxCols / 16; ++kk)
            wgmma_ss<8>(acc, smem_desc(stage + box * 8192 + kk * 32, 16, 1024), smem_desc(b + box * 1024 + kk * 32, 16, 1024));
        wgmma_commit();
        wgmma_wait<1>();  // the previous chunk's MMAs are done: its stage may be refilled
        mbar_arrive_if(&empty[prev < 0 ? 0 : prev], prev >= 0);
        prev = slot;
        if (++slot == kStages) slot = 0, phase ^= 1;
      }
      wgmma_wait<0>();
      mbar_arrive(&empty[prev]);
      fence_registers(acc);
      // column 0: rows 16 warp + lane / 4 (acc[0]) and + 8 (acc[2]) in the lanes with lane % 4 == 0
      if (lane % 4 == 0) sums[16 * warp + lane / 4] = acc[0][0], sums[16 * warp + lane / 4 + 8] = acc[0][2];
      sync_consumers();
      if (op.ranges > 1) {  // the last range of the tile to finish sums them all, in range order
        if (threadIdx.x < kTileRows) op.partial[(size_t)range * op.n + tile * kTileRows + threadIdx.x] = sums[threadIdx.x];
        __threadfence();
        sync_consumers();
        if (threadIdx.x == 0) last = atomicAdd(op.tile_count + tile, 1) == op.ranges - 1;
        sync_consumers();
        if (!last) continue;
        __threadfence();
        if (threadIdx.x < kTileRows) {
          float v = 0.f;
          for (int r = 0; r < op.ranges; ++r) v += __ldcg(op.partial + (size_t)r * op.n + tile * kTileRows + threadIdx.x);
          sums[threadIdx.x] = v;
        }
        sync_consumers();
      }
      finish_rows(s, op, tile, sums, &mine);
      if (op.kind != kLmOp) signal(s, o);
      else sync_consumers();
    }
  }
  if (threadIdx.x == 0 && mine) atomicMax(s.best, mine);
}

// ---- host ------------------------------------------------------------------------------------------
// Weights from a hash of (op, row, column): the same values packed for the GPU and read by the CPU
// reference, never stored logically.
static inline float weight(uint32_t seed, uint32_t r, uint32_t k, float scale) {
  uint32_t h = seed * 0x9E3779B1u ^ r * 0x85EBCA77u ^ k * 0xC2B2AE3Du;
  h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
  return __half2float(__float2half(((h >> 8) * (1.0f / 16777216.0f) * 2.f - 1.f) * scale));
}
// Logical row of packed row i of tile t: gate/up tiles hold 32 gate rows then their 32 up rows.
static inline int logical_row(const Op& op, int t, int i) {
  if (op.kind == kGateUpOp) return i < 32 ? t * 32 + i : kInter + t * 32 + (i - 32);
  return t * kTileRows + i;
}

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  Step s{};
  s.first_op = 0, s.last_op = kNumOps;
  size_t weight_bytes = 0;
  std::vector<void*> allocations;
  std::vector<__half> norm(kHidden, __float2half(1.0f));
  __half* norm_d = nullptr;
  CK(cudaMalloc(&norm_d, kHidden * 2));
  CK(cudaMemcpy(norm_d, norm.data(), kHidden * 2, cudaMemcpyHostToDevice));
  int n = 0;
  for (int l = 0; l < kLayers; ++l) {
    s.ops[n++] = Op{kQkvOp, kQKV, kHidden, 4, l, nullptr, norm_d};
    s.ops[n++] = Op{kAttnOp, kQHeads, 0, 1, l};
    s.ops[n++] = Op{kOOp, kHidden, kHidden, 4, l};
    s.ops[n++] = Op{kGateUpOp, 2 * kInter, kHidden, 1, l, nullptr, norm_d};
    s.ops[n++] = Op{kDownOp, kHidden, kInter, 8, l};
  }
  s.ops[n++] = Op{kLmOp, kVocab, kHidden, 1, kLayers, nullptr, norm_d};
  std::vector<__half> packed;
  for (int o = 0; o < kNumOps; ++o) {
    Op& op = s.ops[o];
    if (op.kind == kAttnOp) continue;
    const int tiles = op.tiles(), chunks = op.chunks(), cols = op.range_cols();
    const float scale = 1.0f / std::sqrt((float)op.k);
    packed.assign((size_t)tiles * kTileRows * op.k, __float2half(0.f));
#pragma omp parallel for schedule(dynamic, 4)
    for (int t = 0; t < tiles; ++t)
      for (int r = 0; r < op.ranges; ++r)
        for (int c = 0; c < chunks; ++c)
          for (int box = 0; box < kChunkCols / kBoxCols; ++box) {
            __half* dst = packed.data() + ((((size_t)t * op.ranges + r) * chunks + c) * kChunkBytes + box * 8192) / 2;
            for (int i = 0; i < kTileRows; ++i) {
              const int row = logical_row(op, t, i);
              if (row >= (op.kind == kGateUpOp ? 2 * kInter : op.n)) continue;  // past the vocabulary: zeros
              for (int kk = 0; kk < kBoxCols; ++kk) {
                const int k = r * cols + c * kChunkCols + box * kBoxCols + kk;
                dst[i * 64 + (((kk / 8) ^ (i & 7)) * 8) + kk % 8] = __float2half(weight(o, row, k, scale));
              }
            }
          }
    void* d = nullptr;
    CK(cudaMalloc(&d, packed.size() * 2));
    CK(cudaMemcpy(d, packed.data(), packed.size() * 2, cudaMemcpyHostToDevice));
    allocations.push_back(d);
    op.w = static_cast<const __half*>(d);
    weight_bytes += packed.size() * 2;
    if (op.ranges > 1) {
      CK(cudaMalloc(&op.partial, (size_t)op.ranges * op.n * 4));
      CK(cudaMalloc(&op.tile_count, (size_t)tiles * 4));
    }
  }
  std::vector<__half> kcache((size_t)kLayers * kKVHeads * kCtx * kHeadDim), vcache(kcache.size());
  for (size_t i = 0; i < kcache.size(); ++i)
    kcache[i] = __float2half(weight(1000, i, 0, 1.f)), vcache[i] = __float2half(weight(1001, i, 0, 1.f));
  __half *kc = nullptr, *vc = nullptr;
  CK(cudaMalloc(&kc, kcache.size() * 2));
  CK(cudaMalloc(&vc, vcache.size() * 2));
  CK(cudaMemcpy(kc, kcache.data(), kcache.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(vc, vcache.data(), vcache.size() * 2, cudaMemcpyHostToDevice));
  s.kcache = kc, s.vcache = vc;
  std::vector<float> x0(kHidden);
  for (int i = 0; i < kHidden; ++i) x0[i] = weight(1002, i, 0, 1.f);
  float* x0_d = nullptr;
  CK(cudaMalloc(&x0_d, kHidden * 4));
  CK(cudaMemcpy(x0_d, x0.data(), kHidden * 4, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&s.x, kHidden * 4));
  CK(cudaMalloc(&s.qkv, kQKV * 2));
  CK(cudaMalloc(&s.attn, kHidden * 2));
  CK(cudaMalloc(&s.h, kInter * 2));
  CK(cudaMalloc(&s.done, kNumOps * 4));
  CK(cudaMalloc(&s.best, 8));

  const size_t smem = 1024 + (size_t)kStages * kChunkBytes + (kMaxRange / kBoxCols) * 1024 + kInter * 2 + 2048 * 4;
  CK(cudaFuncSetAttribute(persistent_step, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  auto reset = [&](cudaStream_t q) {
    cudaMemcpyAsync(s.x, x0_d, kHidden * 4, cudaMemcpyDeviceToDevice, q);
    cudaMemsetAsync(s.done, 0, kNumOps * 4, q);
    cudaMemsetAsync(s.best, 0, 8, q);
    for (int o = 0; o < kNumOps; ++o)
      if (s.ops[o].tile_count) cudaMemsetAsync(s.ops[o].tile_count, 0, s.ops[o].tiles() * 4, q);
  };
  auto launch = [&](cudaStream_t q, int first, int last_op, int waits, int copy_only) {
    Step t = s;
    t.first_op = first, t.last_op = last_op, t.waits = waits, t.copy_only = copy_only;
    persistent_step<<<sms, kThreads, smem, q>>>(t);
  };
  auto persistent = [&](cudaStream_t q) { launch(q, 0, kNumOps, 1, 0); };
  auto separate = [&](cudaStream_t q) {
    for (int o = 0; o < kNumOps; ++o) launch(q, o, o + 1, 0, 0);
  };
  auto result = [&](std::vector<float>& x, unsigned long long& best) {
    cudaMemcpy(x.data(), s.x, kHidden * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(&best, s.best, 8, cudaMemcpyDeviceToHost);
  };
  std::vector<float> xa(kHidden), xb(kHidden);
  unsigned long long ba = 0, bb = 0;
  reset(st), persistent(st);
  CK(cudaStreamSynchronize(st));
  CK(cudaGetLastError());
  result(xa, ba);
  reset(st), separate(st);
  CK(cudaStreamSynchronize(st));
  CK(cudaGetLastError());
  result(xb, bb);

  // CPU reference of the step (fp32 sums in double, fp16 roundings where the GPU rounds)
  auto h16 = [](float v) { return __half2float(__float2half(v)); };
  std::vector<float> x = x0, in(kInter), qkv(kQKV), attn(kHidden), hbuf(kInter);
  auto gemv = [&](int o, const std::vector<float>& input, int rows, std::vector<double>& out) {
    const Op& op = s.ops[o];
    const float scale = 1.0f / std::sqrt((float)op.k);
    out.assign(rows, 0.0);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) {
      double acc = 0;
      for (int k = 0; k < op.k; ++k) acc += (double)weight(o, r, k, scale) * input[k];
      out[r] = acc;
    }
  };
  auto normed = [&]() {
    double ss = 0;
    for (float v : x) ss += (double)v * v;
    const float inv = 1.0f / std::sqrt((float)(ss / kHidden) + 1e-5f);
    for (int k = 0; k < kHidden; ++k) in[k] = h16(x[k] * inv);
  };
  std::vector<double> out;
  int ref_argmax = -1;
  for (int o = 0; o < kNumOps; ++o) {
    const Op& op = s.ops[o];
    if (op.kind == kQkvOp) {
      normed(), gemv(o, in, kQKV, out);
      for (int i = 0; i < kQKV; ++i) qkv[i] = h16((float)out[i]);
    } else if (op.kind == kAttnOp) {
      for (int hd = 0; hd < kQHeads; ++hd) {
        const int kvh = hd / (kQHeads / kKVHeads);
        const size_t base = ((size_t)op.layer * kKVHeads + kvh) * kCtx * kHeadDim;
        std::vector<double> p(kCtx + 1);
        double mx = -1e300, l = 0;
        for (int j = 0; j <= kCtx; ++j) {
          double d = 0;
          for (int i = 0; i < kHeadDim; ++i)
            d += (double)qkv[hd * kHeadDim + i] *
                 (j < kCtx ? __half2float(kcache[base + (size_t)j * kHeadDim + i]) : qkv[kHidden + kvh * kHeadDim + i]);
          p[j] = d * 0.125, mx = std::max(mx, p[j]);
        }
        for (auto& v : p) l += (v = std::exp(v - mx));
        for (int i = 0; i < kHeadDim; ++i) {
          double a = 0;
          for (int j = 0; j <= kCtx; ++j)
            a += p[j] * (j < kCtx ? __half2float(vcache[base + (size_t)j * kHeadDim + i])
                                  : qkv[kHidden + kKVHeads * kHeadDim + kvh * kHeadDim + i]);
          attn[hd * kHeadDim + i] = h16((float)(a / l));
        }
      }
    } else if (op.kind == kOOp) {
      gemv(o, attn, kHidden, out);
      for (int i = 0; i < kHidden; ++i) x[i] += (float)out[i];
    } else if (op.kind == kGateUpOp) {
      normed(), gemv(o, in, 2 * kInter, out);
      for (int i = 0; i < kInter; ++i) {
        const float g = h16((float)out[i]), u = h16((float)out[kInter + i]);
        hbuf[i] = h16(g / (1.f + std::exp(-g)) * u);
      }
    } else if (op.kind == kDownOp) {
      gemv(o, hbuf, kHidden, out);
      for (int i = 0; i < kHidden; ++i) x[i] += (float)out[i];
    } else {
      normed(), gemv(o, in, kVocab, out);
      ref_argmax = 0;
      for (int i = 1; i < kVocab; ++i)
        if (out[i] > out[ref_argmax]) ref_argmax = i;
    }
  }
  double err = 0, mag = 0;
  int finite = 0;
  for (int i = 0; i < kHidden; ++i) {
    err = std::max(err, (double)std::fabs(xa[i] - x[i])), mag = std::max(mag, (double)std::fabs(x[i]));
    finite += std::isfinite(xa[i]);
  }
  const int got_argmax = (int)(0xFFFFFFFFu - (uint32_t)(ba & 0xFFFFFFFFu));
  const bool same = std::memcmp(xa.data(), xb.data(), kHidden * 4) == 0 && ba == bb;
  std::printf("%s (%d SMs): %.3f GB of weights; persistent == one launch per op bit for bit: %s; against the CPU: "
              "max |x - ref| / max |ref| = %.2e, argmax %d (CPU %d), %d/%d finite\n",
              prop.name, sms, weight_bytes / 1e9, same ? "yes" : "NO", err / mag, got_argmax, ref_argmax, finite,
              kHidden);

  auto time_graph = [&](auto&& body, const char* name) -> int {
    cudaGraph_t g;
    cudaGraphExec_t e;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    reset(st);
    body(st);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&e, g, 0));
    for (int i = 0; i < 5; ++i) CK(cudaGraphLaunch(e, st));
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    const int reps = 50;
    cudaEventRecord(a, st);
    for (int i = 0; i < reps; ++i) CK(cudaGraphLaunch(e, st));
    cudaEventRecord(b, st);
    CK(cudaEventSynchronize(b));
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    const double us = 1e3 * ms / reps;
    std::printf("%-46s %8.1f us a step  %7.0f GB/s of weights  (%.0f tok/s)\n", name, us, weight_bytes / us / 1e3,
                1e6 / us);
    return 0;
  };
  if (time_graph([&](cudaStream_t q) { persistent(q); }, "persistent kernel")) return 1;
  if (time_graph([&](cudaStream_t q) { separate(q); }, "one launch per op (81, graph)")) return 1;
  if (time_graph([&](cudaStream_t q) { launch(q, 0, kNumOps, 0, 0); }, "persistent, no waits (consumer ceiling)")) return 1;
  if (time_graph([&](cudaStream_t q) { launch(q, 0, kNumOps, 0, 1); }, "persistent, copies only (copy ceiling)")) return 1;
  for (void* p : allocations) cudaFree(p);
  return 0;
}
