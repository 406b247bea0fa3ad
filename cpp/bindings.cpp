// Python bindings: kvinfer._core (private; python/kvinfer/__init__.py re-exports the public names).
// C++ exceptions map to: std::invalid_argument -> ValueError, std::out_of_range -> IndexError,
// OutOfMemoryError -> kvinfer.OutOfMemoryError(MemoryError), CudaError -> kvinfer.CudaError,
// ContextOverflowError -> kvinfer.ContextOverflowError(ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <vector>

#include "device.h"
#include "device_memory.h"
#include "engine.h"
#include "model_config.h"
#include "ops/simd.h"
#include "cublas_loader.h"
#if KVINFER_WITH_CUDA
#include "cuda/attention.h"
#endif
#include "errors.h"
#include "half.h"
#include "kv_cache.h"
#include "vram_tracker.h"

#if KVINFER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace kvinfer;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A C-contiguous fp16 copy (or view) of a float16/float32 numpy array shaped
// [tokens, num_kv_heads, head_dim]; `name` is used in error messages.
std::vector<half_t> as_kv_rows(const py::array& a, const char* name, const KVCacheConfig& c) {
  KVINFER_CHECK_ARG(a.ndim() == 3 && a.shape(0) > 0 && a.shape(1) == c.num_kv_heads &&
                        a.shape(2) == c.head_dim,
                    name, ".shape=", shape_str(a), " != expected (tokens>0, num_kv_heads=",
                    c.num_kv_heads, ", head_dim=", c.head_dim, ")");
  const py::dtype dt = a.dtype();
  const size_t n = static_cast<size_t>(a.size());
  std::vector<half_t> out(n);
  if (dt.kind() == 'f' && dt.itemsize() == 2) {
    auto c16 = py::array::ensure(a, py::array::c_style);
    std::memcpy(out.data(), c16.data(), n * sizeof(half_t));
  } else if (dt.kind() == 'f' && dt.itemsize() == 4) {
    auto c32 = py::array_t<float, py::array::c_style>::ensure(a);
    const float* src = c32.data();
    for (size_t i = 0; i < n; ++i) out[i] = float_to_half(src[i]);
  } else {
    throw std::invalid_argument(str(name, ".dtype=", std::string(py::str(dt)),
                                    " is not supported; use float16 or float32"));
  }
  return out;
}

py::array read_rows(const KVCache& cache, int layer, int slot, bool keys) {
  const KVCacheConfig& c = cache.config();
  const int length = cache.length(slot);
  py::array out(py::dtype("float16"), std::vector<py::ssize_t>{length, c.num_kv_heads, c.head_dim});
  auto* dst = static_cast<half_t*>(out.mutable_data());
  py::gil_scoped_release release;
  keys ? cache.read_keys(layer, slot, dst) : cache.read_values(layer, slot, dst);
  return out;
}

py::dict stats_dict(const PurposeStats& s) {
  py::dict d;
  d["bytes"] = s.bytes;
  d["peak_bytes"] = s.peak_bytes;
  d["allocations"] = s.allocations;
  d["total_allocations"] = s.total_allocations;
  return d;
}

py::dict build_info() {
  py::dict d;
  d["version"] = KVINFER_VERSION;
  d["cxx_compiler"] = KVINFER_CXX_COMPILER;
#if KVINFER_WITH_CUDA
  d["cuda"] = true;
  d["cuda_architectures"] = KVINFER_CUDA_ARCHS;
  d["cuda_compiler"] = KVINFER_CUDA_COMPILER;
  d["cuda_runtime"] = CUDART_VERSION;
#else
  d["cuda"] = false;
  d["cuda_architectures"] = "";
  d["cuda_compiler"] = "";
  d["cuda_runtime"] = 0;
#endif
  return d;
}

py::list cuda_devices() {
  py::list out;
#if KVINFER_WITH_CUDA
  for (int i = 0, n = cuda_device_count(); i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    size_t free_b = 0, total_b = 0;
    {
      DeviceGuard guard(Device::cuda(i));
      cudaMemGetInfo(&free_b, &total_b);
    }
    py::dict d;
    d["index"] = i;
    d["name"] = std::string(p.name);
    d["compute_capability"] = std::to_string(p.major) + "." + std::to_string(p.minor);
    d["multiprocessors"] = p.multiProcessorCount;
    d["total_bytes"] = total_b;
    d["free_bytes"] = free_b;
    out.append(d);
  }
#endif
  return out;
}

// cudaMemGetInfo for tests and tools: (free, total) bytes of a device.
py::tuple cuda_mem_info(int index) {
#if KVINFER_WITH_CUDA
  DeviceGuard guard(Device::parse("cuda:" + std::to_string(index)));
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) throw CudaError("cudaMemGetInfo failed");
  return py::make_tuple(free_b, total_b);
#else
  throw std::invalid_argument("this kvinfer was built without the CUDA backend");
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "kvinfer native core (private; import kvinfer instead)";

  py::register_exception<OutOfMemoryError>(m, "OutOfMemoryError", PyExc_MemoryError);
  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  py::register_exception<ContextOverflowError>(m, "ContextOverflowError", PyExc_ValueError);

  m.def("build_info", &build_info, "Version, CUDA on/off, CUDA architectures and compilers.");
  m.def("cuda_compiled", &cuda_compiled);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_devices", &cuda_devices, "Name, compute capability and memory of each CUDA device.");
  m.def("cuda_mem_info", &cuda_mem_info, py::arg("index") = 0);

  py::class_<VramTracker, std::shared_ptr<VramTracker>>(m, "VramTracker",
      "Bytes held per purpose, with peaks, live allocation counts and an optional budget.")
      .def(py::init([](std::optional<py::int_> budget_bytes) {
             if (!budget_bytes) return std::make_shared<VramTracker>();
             long long b = budget_bytes->cast<long long>();
             KVINFER_CHECK_ARG(b >= 0, "budget_bytes=", b, " must be >= 0");
             return std::make_shared<VramTracker>(static_cast<size_t>(b));
           }),
           py::arg("budget_bytes") = py::none())
      .def_property_readonly("total_bytes", &VramTracker::total_bytes)
      .def_property_readonly("peak_bytes", &VramTracker::peak_bytes)
      .def_property("budget_bytes", &VramTracker::budget_bytes, &VramTracker::set_budget)
      .def("report", [](const VramTracker& t) {
             py::dict purposes;
             for (const auto& [name, s] : t.report()) purposes[py::str(name)] = stats_dict(s);
             py::dict d;
             d["purposes"] = purposes;
             d["total_bytes"] = t.total_bytes();
             d["peak_bytes"] = t.peak_bytes();
             d["budget_bytes"] = t.budget_bytes();
             return d;
           }, "{'purposes': {name: {bytes, peak_bytes, allocations, total_allocations}}, "
              "'total_bytes', 'peak_bytes', 'budget_bytes'}")
      .def("bytes", [](const VramTracker& t, const std::string& purpose) {
             auto r = t.report();
             auto it = r.find(purpose);
             return it == r.end() ? size_t{0} : it->second.bytes;
           }, py::arg("purpose"))
      .def("__repr__", [](const VramTracker& t) { return "VramTracker(" + t.describe() + ")"; });
  m.def("default_tracker", &VramTracker::default_tracker,
        "The process-wide tracker used when none is given.");

  py::class_<DeviceMemory>(m, "DeviceMemory", "One tracked allocation on the CPU or a CUDA device.")
      .def(py::init([](size_t nbytes, const std::string& device, const std::string& purpose,
                       std::shared_ptr<VramTracker> tracker, bool zero) {
             Device d = Device::parse(device);
             py::gil_scoped_release release;
             return std::make_unique<DeviceMemory>(nbytes, d, purpose, std::move(tracker), zero);
           }),
           py::arg("nbytes"), py::arg("device") = "cpu", py::arg("purpose") = "workspace",
           py::arg("tracker") = nullptr, py::arg("zero") = true)
      .def_property_readonly("nbytes", &DeviceMemory::bytes)
      .def_property_readonly("device", [](const DeviceMemory& m) { return m.device().str(); })
      .def_property_readonly("purpose", &DeviceMemory::purpose)
      .def_property_readonly("data_ptr", [](const DeviceMemory& m) {
             return reinterpret_cast<uintptr_t>(m.data());
           })
      .def("free", &DeviceMemory::reset, "Release the memory now (idempotent).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](DeviceMemory& m, py::args) { m.reset(); });

  py::class_<KVCacheConfig>(m, "KVCacheConfig", "Shape of a KV cache; every field must be > 0.")
      .def(py::init([](int num_layers, int max_context, int num_kv_heads, int head_dim,
                       int max_batch) {
             KVCacheConfig c{num_layers, max_context, num_kv_heads, head_dim, max_batch};
             c.validate();
             return c;
           }),
           py::arg("num_layers"), py::arg("max_context"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("max_batch") = 1)
      .def_readonly("num_layers", &KVCacheConfig::num_layers)
      .def_readonly("max_context", &KVCacheConfig::max_context)
      .def_readonly("num_kv_heads", &KVCacheConfig::num_kv_heads)
      .def_readonly("head_dim", &KVCacheConfig::head_dim)
      .def_readonly("max_batch", &KVCacheConfig::max_batch)
      .def("__eq__", [](const KVCacheConfig& a, const KVCacheConfig& b) { return a == b; })
      .def("__repr__", [](const KVCacheConfig& c) {
        return str("KVCacheConfig(num_layers=", c.num_layers, ", max_context=", c.max_context,
                   ", num_kv_heads=", c.num_kv_heads, ", head_dim=", c.head_dim,
                   ", max_batch=", c.max_batch, ")");
      });

  py::class_<KVCache>(m, "KVCache", "Layer-strided fp16 KV cache with per-slot lengths.")
      .def(py::init([](const KVCacheConfig& config, const std::string& device,
                       std::shared_ptr<VramTracker> tracker) {
             Device d = Device::parse(device);
             py::gil_scoped_release release;
             return std::make_unique<KVCache>(config, d, std::move(tracker));
           }),
           py::arg("config"), py::arg("device") = "cpu", py::arg("tracker") = nullptr)
      .def_static("size_bytes", &KVCache::size_bytes, py::arg("config"),
                  "2 * num_layers * max_batch * max_context * num_kv_heads * head_dim * 2 bytes")
      .def_property_readonly("config", &KVCache::config)
      .def_property_readonly("device", [](const KVCache& c) { return c.device().str(); })
      .def_property_readonly("nbytes", &KVCache::nbytes)
      .def("length", &KVCache::length, py::arg("slot"))
      .def_property_readonly("lengths", &KVCache::lengths)
      .def("pending", &KVCache::pending, py::arg("slot"))
      .def("append", [](KVCache& cache, int layer, int slot, const py::array& k, const py::array& v) {
             std::vector<half_t> k16 = as_kv_rows(k, "k", cache.config());
             std::vector<half_t> v16 = as_kv_rows(v, "v", cache.config());
             KVINFER_CHECK_ARG(k.shape(0) == v.shape(0), "k.shape=", shape_str(k),
                               " != v.shape=", shape_str(v));
             py::gil_scoped_release release;
             cache.append(layer, slot, k16.data(), v16.data(), static_cast<int>(k.shape(0)));
           }, py::arg("layer"), py::arg("slot"), py::arg("k"), py::arg("v"),
           "Write K/V [tokens, num_kv_heads, head_dim] (float16/float32) at the slot's length.")
      .def("commit", py::overload_cast<int, int>(&KVCache::commit), py::arg("slot"), py::arg("tokens"),
           "Advance the slot's length once every layer has appended `tokens`.")
      .def("keys", [](const KVCache& c, int layer, int slot) { return read_rows(c, layer, slot, true); },
           py::arg("layer"), py::arg("slot"))
      .def("values", [](const KVCache& c, int layer, int slot) { return read_rows(c, layer, slot, false); },
           py::arg("layer"), py::arg("slot"))
      .def("clear", &KVCache::clear, py::arg("slot"))
      .def("reset", &KVCache::reset);

  py::class_<RopeScaling>(m, "RopeScaling")
      .def(py::init<>())
      .def_readwrite("type", &RopeScaling::type)
      .def_readwrite("factor", &RopeScaling::factor)
      .def_readwrite("low_freq_factor", &RopeScaling::low_freq_factor)
      .def_readwrite("high_freq_factor", &RopeScaling::high_freq_factor)
      .def_readwrite("original_max_positions", &RopeScaling::original_max_positions);

  py::class_<ModelConfig>(m, "ModelConfig", "Architecture of a decoder-only model (see kvinfer.config).")
      .def(py::init<>())
      .def_readwrite("architecture", &ModelConfig::architecture)
      .def_readwrite("vocab_size", &ModelConfig::vocab_size)
      .def_readwrite("hidden_size", &ModelConfig::hidden_size)
      .def_readwrite("num_layers", &ModelConfig::num_layers)
      .def_readwrite("num_heads", &ModelConfig::num_heads)
      .def_readwrite("num_kv_heads", &ModelConfig::num_kv_heads)
      .def_readwrite("head_dim", &ModelConfig::head_dim)
      .def_readwrite("intermediate_size", &ModelConfig::intermediate_size)
      .def_readwrite("max_positions", &ModelConfig::max_positions)
      .def_readwrite("norm_eps", &ModelConfig::norm_eps)
      .def_readwrite("rope_theta", &ModelConfig::rope_theta)
      .def_readwrite("rope_scaling", &ModelConfig::rope_scaling)
      .def_readwrite("tie_word_embeddings", &ModelConfig::tie_word_embeddings)
      .def_readwrite("qkv_bias", &ModelConfig::qkv_bias)
      .def_readwrite("o_bias", &ModelConfig::o_bias)
      .def_readwrite("mlp_bias", &ModelConfig::mlp_bias)
      .def_readwrite("norm_bias", &ModelConfig::norm_bias)
      .def_property("norm",
          [](const ModelConfig& c) { return c.norm == NormKind::RMSNorm ? "rms" : "layer"; },
          [](ModelConfig& c, const std::string& v) {
            KVINFER_CHECK_ARG(v == "rms" || v == "layer", "norm='", v, "' is not 'rms' or 'layer'");
            c.norm = v == "rms" ? NormKind::RMSNorm : NormKind::LayerNorm;
          })
      .def_property("mlp",
          [](const ModelConfig& c) { return c.mlp == MlpKind::SwiGLU ? "swiglu" : "gelu_new"; },
          [](ModelConfig& c, const std::string& v) {
            KVINFER_CHECK_ARG(v == "swiglu" || v == "gelu_new", "mlp='", v, "' is not 'swiglu' or 'gelu_new'");
            c.mlp = v == "swiglu" ? MlpKind::SwiGLU : MlpKind::GeluNew;
          })
      .def_property("positions",
          [](const ModelConfig& c) { return c.positions == PositionKind::Rope ? "rope" : "learned"; },
          [](ModelConfig& c, const std::string& v) {
            KVINFER_CHECK_ARG(v == "rope" || v == "learned", "positions='", v, "' is not 'rope' or 'learned'");
            c.positions = v == "rope" ? PositionKind::Rope : PositionKind::Learned;
          })
      .def("validate", &ModelConfig::validate)
      .def("weight_specs", [](const ModelConfig& c) {
             py::list out;
             for (const auto& t : weight_layout(c))
               out.append(py::make_tuple(t.name, py::tuple(py::cast(t.shape)), t.offset));
             return out;
           }, "[(name, shape, byte offset)] of the fp16 weight allocation")
      .def("weight_bytes", [](const ModelConfig& c) { return weight_bytes(c); })
      .def("parameter_count", [](const ModelConfig& c) { return parameter_count(c); });

  m.def("activation_bytes", [](const ModelConfig& c, int max_batch, int max_context, int max_tokens,
                                const std::string& device) {
          const bool cuda = device.rfind("cuda", 0) == 0;
          return activation_layout(c, EngineShape{max_batch, max_context, max_tokens}, cuda).total;
        }, py::arg("config"), py::arg("max_batch"), py::arg("max_context"), py::arg("max_tokens"),
        py::arg("device") = "cpu",
        "Bytes of the activation buffers an Engine of this shape allocates on that device kind.");
  m.def("gemm_workspace_bytes", [](const std::string& device) {
          return gemm_workspace_bytes(device.rfind("cuda", 0) == 0);
        }, py::arg("device") = "cpu");
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.def("set_num_threads", [](int n) {
    KVINFER_CHECK_ARG(n >= 1, "threads=", n, " must be >= 1");
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
  });
  m.def("cuda_forward_available", []() {
#if KVINFER_WITH_CUDA
          return cublas::available();
#else
          return false;
#endif
        },
        "Whether the engine's forward pass runs on CUDA in this build.");
  m.def("cpu_simd", []() { return simd::has_avx2() ? "avx2+fma+f16c" : "scalar"; });

  py::class_<Engine>(m, "Engine", "Weights, KV cache and activation buffers of one model.")
      .def(py::init([](const ModelConfig& c, const std::string& device, int max_batch,
                       int max_context, int max_tokens, std::shared_ptr<VramTracker> tracker) {
             Device d = Device::parse(device);
             py::gil_scoped_release release;
             return std::make_unique<Engine>(c, d, EngineShape{max_batch, max_context, max_tokens},
                                             std::move(tracker));
           }),
           py::arg("config"), py::arg("device") = "cpu", py::arg("max_batch") = 1,
           py::arg("max_context") = 2048, py::arg("max_tokens") = 512,
           py::arg("tracker") = nullptr)
      .def_property_readonly("device", [](const Engine& e) { return e.device().str(); })
      .def_property_readonly("max_batch", [](const Engine& e) { return e.shape().max_batch; })
      .def_property_readonly("max_context", [](const Engine& e) { return e.shape().max_context; })
      .def_property_readonly("max_tokens", [](const Engine& e) { return e.shape().max_tokens; })
      .def_property_readonly("cache", &Engine::cache, py::return_value_policy::reference_internal)
      .def("set_weight", [](Engine& e, const std::string& name, const py::array& a) {
             const py::dtype dt = a.dtype();
             KVINFER_CHECK_ARG(dt.kind() == 'f' && dt.itemsize() == 2, "weight '", name,
                               "' must be float16, got ", std::string(py::str(dt)));
             auto c16 = py::array::ensure(a, py::array::c_style);
             std::vector<int64_t> shape(c16.shape(), c16.shape() + c16.ndim());
             const half_t* data = static_cast<const half_t*>(c16.data());
             py::gil_scoped_release release;
             e.set_weight(name, data, shape);
           }, py::arg("name"), py::arg("array"))
      .def("missing_weights", &Engine::missing_weights)
      .def("release", &Engine::release, "Free weights, KV cache and activations now.")
      .def("forward", [](Engine& e, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                         py::array_t<int32_t, py::array::c_style | py::array::forcecast> seq_slots,
                         py::array_t<int32_t, py::array::c_style | py::array::forcecast> seq_starts,
                         std::optional<py::array_t<float, py::array::c_style>> all_logits,
                         std::optional<py::array_t<float, py::array::c_style>> hidden_states) {
             const int batch = static_cast<int>(seq_slots.size());
             KVINFER_CHECK_ARG(seq_starts.size() == batch + 1, "seq_starts has ", seq_starts.size(),
                               " entries, expected batch + 1 = ", batch + 1);
             const int total = static_cast<int>(tokens.size());
             float* out = nullptr;
             if (all_logits) {
               KVINFER_CHECK_ARG(all_logits->ndim() == 2 && all_logits->shape(0) == total &&
                                     all_logits->shape(1) == e.config().vocab_size,
                                 "all_logits must be float32 [", total, ", ", e.config().vocab_size, "]");
               out = all_logits->mutable_data();
             }
             float* states = nullptr;
             if (hidden_states) {
               const ModelConfig& c = e.config();
               KVINFER_CHECK_ARG(hidden_states->ndim() == 3 && hidden_states->shape(0) == c.num_layers + 1 &&
                                     hidden_states->shape(1) == total && hidden_states->shape(2) == c.hidden_size,
                                 "hidden_states must be float32 [", c.num_layers + 1, ", ", total, ", ",
                                 c.hidden_size, "]");
               states = hidden_states->mutable_data();
             }
             py::gil_scoped_release release;
             e.forward(tokens.data(), total, seq_slots.data(), seq_starts.data(), batch, out, states);
           }, py::arg("tokens"), py::arg("seq_slots"), py::arg("seq_starts"),
           py::arg("all_logits") = py::none(), py::arg("hidden_states") = py::none(),
           "One step: append each sequence's tokens at its slot and compute logits.")
      .def_property_readonly("logits", [](const Engine& e) {
             py::array_t<float> out({e.shape().max_batch, e.config().vocab_size});
             e.copy_logits(out.mutable_data(), e.shape().max_batch);
             return out;
           }, "[max_batch, vocab] float32 copy of the last step's logits")
      .def("sample", [](Engine& e, const std::vector<std::tuple<float, int, float, float, float, uint64_t, uint64_t>>& rows) {
             std::vector<SamplingArgs> args;
             for (const auto& [t, k, p, mp, rp, seed, step] : rows) args.push_back({t, k, p, mp, rp, seed, step});
             py::array_t<int32_t> out(static_cast<py::ssize_t>(args.size()));
             int32_t* dst = out.mutable_data();
             {
               py::gil_scoped_release release;
               e.sample(args.data(), static_cast<int>(args.size()), dst);
             }
             return out;
           }, py::arg("rows"),
           "One token per sequence of the last forward; rows[b] = (temperature, top_k, top_p, "
           "min_p, repetition_penalty, seed, step).");

  // Raw CUDA ops on device pointers (benchmarks compare them with other libraries' kernels on the
  // same tensors). Pointers are integers; layout strides in elements; stream 0 = legacy default.
  // attention_decode's `partial` is its workspace: decode_workspace_bytes(batch, heads, head_dim)
  // bytes, zeroed once before the first call (every call leaves its counters at zero); max_keys and
  // total_keys are the lengths hint (launch shape only; 0 = unknown); min_chunk 0 chunks as the
  // engine does for a model with kv_heads KV heads (cuda::decode_splits), else the plan given.
  py::module_ ops = m.def_submodule("ops", "raw CUDA ops on device pointers (benchmarks)");
#if KVINFER_WITH_CUDA
  ops.def("attention_decode", [](uintptr_t q, int64_t q_stride, uintptr_t k, uintptr_t v, int64_t slot_stride,
                                 int64_t head_stride, int64_t pos_stride, uintptr_t slots, uintptr_t positions,
                                 int batch, int heads, int kv_heads, int head_dim, float scale, uintptr_t partial,
                                 uintptr_t out, int64_t out_stride, uintptr_t stream, int min_chunk, int max_splits,
                                 int growth_keys, int min_splits, int max_keys, int64_t total_keys) {
    cuda::attention_decode(reinterpret_cast<const half_t*>(q), q_stride, reinterpret_cast<const half_t*>(k),
                           reinterpret_cast<const half_t*>(v), KVLayout{slot_stride, head_stride, pos_stride},
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
                                  float scale, uintptr_t out, int64_t out_stride, uintptr_t stream) {
    cuda::attention_prefill(reinterpret_cast<const half_t*>(q), q_stride, reinterpret_cast<const half_t*>(k),
                            reinterpret_cast<const half_t*>(v), KVLayout{slot_stride, head_stride, pos_stride},
                            reinterpret_cast<const int32_t*>(seq_slots), reinterpret_cast<const int32_t*>(seq_starts),
                            reinterpret_cast<const int32_t*>(positions), batch, max_rows, heads, kv_heads, head_dim,
                            scale, reinterpret_cast<half_t*>(out), out_stride, reinterpret_cast<cudaStream_t>(stream));
  });
  ops.def("decode_workspace_bytes", &cuda::decode_workspace_bytes);
#endif
}
