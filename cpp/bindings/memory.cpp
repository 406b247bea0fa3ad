// Bindings: VramTracker, DeviceMemory, KVCacheConfig, KVCache.
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "bindings/bindings.h"
#include "core/device_memory.h"
#include "core/errors.h"
#include "core/half.h"
#include "core/vram_tracker.h"
#include "runtime/kv_cache.h"

namespace kvinfer::bindings {

namespace {

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
  const bool native = dt.attr("isnative").cast<bool>();
  if (dt.kind() == 'f' && dt.itemsize() == 2 && native) {
    auto c16 = py::array::ensure(a, py::array::c_style);
    std::memcpy(out.data(), c16.data(), n * sizeof(half_t));
  } else if (dt.kind() == 'f' && dt.itemsize() == 4 && native) {
    auto c32 = py::array_t<float, py::array::c_style>::ensure(a);
    const float* src = c32.data();
    for (size_t i = 0; i < n; ++i) {
      out[i] = float_to_half(src[i]);
      KVINFER_CHECK_ARG(!std::isfinite(src[i]) || (out[i] & 0x7c00u) != 0x7c00u, name, " holds ", src[i],
                        " at element ", i, ", beyond the float16 range of the cache");
    }
  } else if (dt.kind() == 'f' && !native) {
    throw std::invalid_argument(str(name, ".dtype=", std::string(py::str(dt)),
                                    " is not in this machine's byte order; convert it with .astype(its native form)"));
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

// A field of KVCacheConfig: an int in [least, 2^31 - 1], else ValueError naming it.
int count(const char* name, const py::int_& v, int least = 1) {
  KVINFER_CHECK_ARG(v >= py::int_(least), "KVCacheConfig.", name, "=", std::string(py::str(v)), " must be ",
                    least == 1 ? "> 0" : ">= 0");
  KVINFER_CHECK_ARG(v <= py::int_(std::numeric_limits<int>::max()), "KVCacheConfig.", name, "=",
                    std::string(py::str(v)), " must be in [", least, ", 2^31 - 1]");
  return v.cast<int>();
}

}  // namespace

void bind_memory(py::module_& m) {
  py::class_<VramTracker, std::shared_ptr<VramTracker>>(m, "VramTracker",
      "Bytes held per purpose, with peaks, live allocation counts and an optional budget.")
      .def(py::init([](std::optional<py::int_> budget_bytes) {
             if (!budget_bytes) return std::make_shared<VramTracker>();
             const py::int_ limit(std::numeric_limits<long long>::max());
             KVINFER_CHECK_ARG(*budget_bytes >= py::int_(0) && *budget_bytes <= limit, "budget_bytes=",
                               std::string(py::str(*budget_bytes)), " must be in [0, 2^63 - 1]");
             const long long b = budget_bytes->cast<long long>();
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

  py::class_<KVCacheConfig>(m, "KVCacheConfig",
      "Shape of a KV cache: a pool of num_blocks blocks of block_size tokens (a power of two) per layer; "
      "num_blocks=0 gives each of max_batch slots its own max_context tokens.")
      .def(py::init([](py::int_ num_layers, py::int_ max_context, py::int_ num_kv_heads, py::int_ head_dim,
                       py::int_ max_batch, py::int_ block_size, py::int_ num_blocks) {
             KVCacheConfig c{count("num_layers", num_layers), count("max_context", max_context),
                             count("num_kv_heads", num_kv_heads), count("head_dim", head_dim),
                             count("max_batch", max_batch), count("block_size", block_size),
                             count("num_blocks", num_blocks, 0)};
             c.validate();
             return c;
           }),
           py::arg("num_layers"), py::arg("max_context"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("max_batch") = 1, py::arg("block_size") = 16, py::arg("num_blocks") = 0)
      .def_readonly("num_layers", &KVCacheConfig::num_layers)
      .def_readonly("max_context", &KVCacheConfig::max_context)
      .def_readonly("num_kv_heads", &KVCacheConfig::num_kv_heads)
      .def_readonly("head_dim", &KVCacheConfig::head_dim)
      .def_readonly("max_batch", &KVCacheConfig::max_batch)
      .def_readonly("block_size", &KVCacheConfig::block_size)
      .def_property_readonly("num_blocks", &KVCacheConfig::pool_blocks)
      .def_property_readonly("blocks_per_seq", &KVCacheConfig::blocks_per_seq)
      .def("__eq__", [](const KVCacheConfig& a, const KVCacheConfig& b) { return a == b; })
      .def("__repr__", [](const KVCacheConfig& c) {
        return str("KVCacheConfig(num_layers=", c.num_layers, ", max_context=", c.max_context,
                   ", num_kv_heads=", c.num_kv_heads, ", head_dim=", c.head_dim,
                   ", max_batch=", c.max_batch, ", block_size=", c.block_size, ", num_blocks=", c.pool_blocks(),
                   ")");
      });

  py::class_<KVCache>(m, "KVCache", "Layer-strided, paged fp16 KV cache with per-slot lengths.")
      .def(py::init([](const KVCacheConfig& config, const std::string& device,
                       std::shared_ptr<VramTracker> tracker) {
             Device d = Device::parse(device);
             py::gil_scoped_release release;
             return std::make_unique<KVCache>(config, d, std::move(tracker));
           }),
           py::arg("config"), py::arg("device") = "cpu", py::arg("tracker") = nullptr)
      .def_static("size_bytes", &KVCache::size_bytes, py::arg("config"),
                  "2 * num_layers * num_blocks * block_size * num_kv_heads * head_dim * 2 bytes")
      .def_property_readonly("config", &KVCache::config)
      .def_property_readonly("device", [](const KVCache& c) { return c.device().str(); })
      .def_property_readonly("nbytes", &KVCache::nbytes)
      .def_property_readonly("num_blocks", &KVCache::num_blocks)
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
      .def("read", [](const KVCache& cache, int layer, int slot, int length, bool keys) {
             const KVCacheConfig& c = cache.config();
             KVINFER_CHECK_ARG(length >= 0 && length <= c.max_context, "length=", length,
                               " is out of range [0, max_context=", c.max_context, "]");
             py::array out(py::dtype("float16"), std::vector<py::ssize_t>{length, c.num_kv_heads, c.head_dim});
             auto* dst = static_cast<half_t*>(out.mutable_data());
             py::gil_scoped_release release;
             cache.read(layer, slot, length, keys, dst);
             return out;
           }, py::arg("layer"), py::arg("slot"), py::arg("length"), py::arg("keys") = true,
           "The first `length` positions of a slot's K (or V), whatever its committed length.")
      .def("read_blocks", [](const KVCache& cache, int layer, py::array_t<int32_t, py::array::c_style> blocks,
                             int length, bool keys) {
             const KVCacheConfig& c = cache.config();
             KVINFER_CHECK_ARG(length >= 0 && length <= c.max_context, "length=", length,
                               " is out of range [0, max_context=", c.max_context, "]");
             const int needed = (length + c.block_size - 1) / c.block_size;
             KVINFER_CHECK_ARG(blocks.ndim() == 1 && blocks.shape(0) >= needed, "blocks must be int32 [>= ", needed,
                               "] for ", length, " positions, got shape ", shape_str(blocks));
             py::array out(py::dtype("float16"), std::vector<py::ssize_t>{length, c.num_kv_heads, c.head_dim});
             auto* dst = static_cast<half_t*>(out.mutable_data());
             const int32_t* table = blocks.data();
             py::gil_scoped_release release;
             cache.read_blocks(layer, table, length, keys, dst);
             return out;
           }, py::arg("layer"), py::arg("blocks"), py::arg("length"), py::arg("keys") = true,
           "The first `length` positions of K (or V) of the sequence whose blocks `blocks` lists.")
      .def("clear", &KVCache::clear, py::arg("slot"))
      .def("reset", &KVCache::reset);
}

}  // namespace kvinfer::bindings
