// kvinfer._bench_ops: raw CUDA ops on device pointers, for benchmarks that compare them with other
// libraries' kernels on the same tensors (benchmarks/gpu_bench.py). Not part of the product:
// built only with KVINFER_BENCH_OPS=ON and never imported by `import kvinfer`.
//
// Pointers are integers; layout strides in elements; stream 0 = legacy default. The K/V caches are
// contiguous per sequence ([slot][kv_head][pos][D]), the layout of other libraries' kernels: to
// the kernels that is a paged cache of one block per sequence (a block longer than any context)
// whose block table is the slot, so `slots` serves as block tables of one entry each.
// attention_decode's `partial` is its workspace: decode_workspace_bytes(batch, heads, head_dim)
// bytes, zeroed once before the first call (every call leaves its counters at zero); max_keys and
// total_keys are the lengths hint (launch shape only; 0 = unknown); min_chunk 0 chunks as the
// engine does for a model with kv_heads KV heads (cuda::decode_splits), else the plan given.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "backend/cuda/attention.h"
#include "backend/cuda/skinny_gemm.h"
#include "core/errors.h"

namespace py = pybind11;
using namespace kvinfer;

// K/V as [slot][kv_head][position][head_dim]: a slot is one block (of 2^30 positions) of a pool of
// num_slots.
static KVLayout contiguous(int64_t slot_stride, int64_t head_stride, int64_t pos_stride, int num_slots) {
  return KVLayout{slot_stride, head_stride, static_cast<int32_t>(pos_stride), 30, 1, num_slots};
}

PYBIND11_MODULE(_bench_ops, ops) {
  ops.doc() = "raw CUDA ops on device pointers (benchmarks only)";

  ops.def("attention_decode", [](uintptr_t q, int64_t q_stride, uintptr_t k, uintptr_t v, int64_t slot_stride,
                                 int64_t head_stride, int64_t pos_stride, uintptr_t slots, uintptr_t positions,
                                 int batch, int heads, int kv_heads, int head_dim, float scale, uintptr_t partial,
                                 uintptr_t out, int64_t out_stride, uintptr_t stream, int min_chunk, int max_splits,
                                 int growth_keys, int min_splits, int max_keys, int64_t total_keys) {
    cuda::attention_decode(reinterpret_cast<const half_t*>(q), q_stride, reinterpret_cast<const half_t*>(k),
                           reinterpret_cast<const half_t*>(v), contiguous(slot_stride, head_stride, pos_stride, batch),
                           reinterpret_cast<const int32_t*>(slots), reinterpret_cast<const int32_t*>(positions),
                           batch, heads, kv_heads, head_dim, scale, reinterpret_cast<float*>(partial),
                           reinterpret_cast<half_t*>(out), out_stride, reinterpret_cast<cudaStream_t>(stream),
                           min_chunk == 0 ? cuda::decode_splits(kv_heads)
                                          : cuda::DecodeSplits{min_chunk, max_splits, growth_keys, min_splits},
                           cuda::DecodeLengths{max_keys, total_keys});
  }, py::arg("q"), py::arg("q_stride"), py::arg("k"), py::arg("v"), py::arg("slot_stride"), py::arg("head_stride"),
     py::arg("pos_stride"), py::arg("slots"), py::arg("positions"), py::arg("batch"), py::arg("heads"),
     py::arg("kv_heads"), py::arg("head_dim"), py::arg("scale"), py::arg("partial"), py::arg("out"),
     py::arg("out_stride"), py::arg("stream"), py::arg("min_chunk") = 0,
     py::arg("max_splits") = cuda::DecodeSplits{}.max_splits,
     py::arg("growth_keys") = cuda::DecodeSplits{}.growth_keys,
     py::arg("min_splits") = cuda::DecodeSplits{}.min_splits, py::arg("max_keys") = 0,
     py::arg("total_keys") = 0);
  ops.def("attention_prefill", [](uintptr_t q, int64_t q_stride, uintptr_t k, uintptr_t v, int64_t slot_stride,
                                  int64_t head_stride, int64_t pos_stride, uintptr_t seq_slots, uintptr_t seq_starts,
                                  uintptr_t positions, int batch, int max_rows, int heads, int kv_heads, int head_dim,
                                  float scale, uintptr_t out, int64_t out_stride, uintptr_t stream,
                                  const std::string& kernel) {
    KVINFER_CHECK_ARG(kernel == "auto" || kernel == "mma" || kernel == "ws" || kernel == "ws_overlap" ||
                          kernel == "ws_overlap_192", "attention_prefill: kernel=", kernel);
    const auto which = kernel == "mma"              ? cuda::PrefillKernel::mma
                       : kernel == "ws"             ? cuda::PrefillKernel::ws
                       : kernel == "ws_overlap"     ? cuda::PrefillKernel::ws_overlap
                       : kernel == "ws_overlap_192" ? cuda::PrefillKernel::ws_overlap_192
                                                    : cuda::PrefillKernel::automatic;
    cuda::attention_prefill(reinterpret_cast<const half_t*>(q), q_stride, reinterpret_cast<const half_t*>(k),
                            reinterpret_cast<const half_t*>(v), contiguous(slot_stride, head_stride, pos_stride, batch),
                            reinterpret_cast<const int32_t*>(seq_slots), reinterpret_cast<const int32_t*>(seq_starts),
                            reinterpret_cast<const int32_t*>(positions), batch, max_rows, heads, kv_heads, head_dim,
                            scale, reinterpret_cast<half_t*>(out), out_stride, reinterpret_cast<cudaStream_t>(stream),
                            which);
  }, py::arg("q"), py::arg("q_stride"), py::arg("k"), py::arg("v"), py::arg("slot_stride"), py::arg("head_stride"),
     py::arg("pos_stride"), py::arg("seq_slots"), py::arg("seq_starts"), py::arg("positions"), py::arg("batch"),
     py::arg("max_rows"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("scale"),
     py::arg("out"), py::arg("out_stride"), py::arg("stream"), py::arg("kernel") = "auto");
  // whether the Hopper kernel runs head_dim here (on this module's contiguous layout)
  ops.def("prefill_ws_available", [](int head_dim) {
    return cuda::prefill_ws_available(head_dim, contiguous(int64_t{1} << 20, int64_t{1} << 16, head_dim, 1));
  }, py::arg("head_dim"));
  ops.def("decode_workspace_bytes", &cuda::decode_workspace_bytes);
  // y[M][N] = x[M][K] W[N][K]^T, fp16 in and out (the skinny GEMM's plain variant); partials and
  // counters as skinny_partial_floats / skinny_counters say (counters zeroed once). kernel: "auto",
  // "narrow" or "wide" (the same bits), or "wgmma" (Hopper; its own bits); benchmarks compare their speed.
  ops.def("skinny_gemm", [](uintptr_t w, int N, int K, int M, uintptr_t x, int64_t x_ld, uintptr_t y, int64_t y_ld,
                            uintptr_t partials, uintptr_t counters, uintptr_t stream, const std::string& kernel) {
    cuda::SkinnyInput in{cuda::SkinnyIn::half, reinterpret_cast<const void*>(x), x_ld};
    cuda::SkinnyOutput out{cuda::SkinnyOut::half, reinterpret_cast<void*>(y), y_ld};
    KVINFER_CHECK_ARG(kernel == "auto" || kernel == "narrow" || kernel == "wide" || kernel == "wgmma",
                      "skinny_gemm: kernel=", kernel);
    const auto which = kernel == "narrow" ? cuda::SkinnyKernel::narrow
                       : kernel == "wide"  ? cuda::SkinnyKernel::wide
                       : kernel == "wgmma" ? cuda::SkinnyKernel::wgmma
                                           : cuda::SkinnyKernel::automatic;
    cuda::skinny_gemm(reinterpret_cast<const half_t*>(w), N, K, M, in, out,
                      cuda::SkinnyWorkspace{reinterpret_cast<float*>(partials), reinterpret_cast<int32_t*>(counters)},
                      reinterpret_cast<cudaStream_t>(stream), which);
  }, py::arg("w"), py::arg("N"), py::arg("K"), py::arg("M"), py::arg("x"), py::arg("x_ld"), py::arg("y"),
     py::arg("y_ld"), py::arg("partials"), py::arg("counters"), py::arg("stream"), py::arg("kernel") = "auto");
  ops.def("skinny_wgmma_available", &cuda::skinny_wgmma_available);
  ops.def("skinny_workspace", [](int N, int K) {
    return py::make_tuple(cuda::skinny_partial_floats(N, K), cuda::skinny_counters(N, K));
  }, "(partial floats, counters) of the skinny GEMM of this shape");
}
