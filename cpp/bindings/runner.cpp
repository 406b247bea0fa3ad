// Bindings: Runner (the step runtime) and the numpy dtype of SamplingArgs.
#include <optional>
#include <vector>

#include "bindings/bindings.h"
#include "core/errors.h"
#include "runtime/runner.h"
#include "types/sampling_args.h"

namespace kvinfer::bindings {

namespace {

using Ints = py::array_t<int32_t, py::array::c_style>;  // no forcecast: float ids are an error
using Args = py::array_t<SamplingArgs, py::array::c_style>;
using Biases = py::array_t<LogitBias, py::array::c_style>;

// A StepBatch over numpy arrays (which stay referenced for the call).
struct PyStep {
  Ints tokens, query_starts, cached_lengths, kv_slots, logit_rows;
  std::optional<Args> sampling;
  std::optional<Ints> prev_sample_row;
  std::optional<Ints> block_tables;
  std::optional<Biases> logit_bias;

  StepBatch batch() const {
    auto one_d = [](const py::array& a, const char* name) {
      KVINFER_CHECK_ARG(a.ndim() == 1, name, " must be 1-D, got shape ", shape_str(a));
      return static_cast<int>(a.size());
    };
    StepBatch b;
    b.num_tokens = one_d(tokens, "tokens");
    b.num_seqs = one_d(kv_slots, "kv_slots");
    b.num_logit_rows = one_d(logit_rows, "logit_rows");
    KVINFER_CHECK_ARG(one_d(query_starts, "query_starts") == b.num_seqs + 1, "query_starts has ",
                      query_starts.size(), " entries, expected len(kv_slots) + 1 = ", b.num_seqs + 1);
    KVINFER_CHECK_ARG(one_d(cached_lengths, "cached_lengths") == b.num_seqs, "cached_lengths has ",
                      cached_lengths.size(), " entries, expected len(kv_slots) = ", b.num_seqs);
    b.tokens = tokens.data();
    b.query_starts = query_starts.data();
    b.cached_lengths = cached_lengths.data();
    b.kv_slots = kv_slots.data();
    b.logit_rows = logit_rows.data();
    if (sampling) {
      KVINFER_CHECK_ARG(one_d(*sampling, "sampling") == b.num_logit_rows, "sampling has ", sampling->size(),
                        " rows, expected len(logit_rows) = ", b.num_logit_rows);
      b.sampling = sampling->data();
    }
    if (prev_sample_row) {
      KVINFER_CHECK_ARG(one_d(*prev_sample_row, "prev_sample_row") == b.num_tokens, "prev_sample_row has ",
                        prev_sample_row->size(), " entries, expected len(tokens) = ", b.num_tokens);
      b.prev_sample_row = prev_sample_row->data();
    }
    if (block_tables) {
      KVINFER_CHECK_ARG(block_tables->ndim() == 2 && block_tables->shape(0) == b.num_seqs && block_tables->shape(1) >= 1,
                        "block_tables must be int32 [len(kv_slots)=", b.num_seqs, ", width >= 1], got shape ",
                        shape_str(*block_tables));
      b.block_tables = block_tables->data();
      b.block_table_width = static_cast<int>(block_tables->shape(1));
    }
    if (logit_bias) {
      KVINFER_CHECK_ARG(logit_bias->ndim() == 1 && logit_bias->size() < (int64_t{1} << 31),
                        "logit_bias must be 1-D, got shape ", shape_str(*logit_bias));
      b.logit_bias = logit_bias->data();
      b.num_logit_bias = static_cast<int>(logit_bias->size());
    }
    return b;
  }
};

py::dict graph_dict(const GraphStats& s) {
  py::dict d;
  d["batch_sizes"] = s.batch_sizes;
  d["prompt_tokens"] = s.prompt_tokens;
  d["capture_seconds"] = s.capture_seconds;
  d["device_bytes"] = s.device_bytes;
  return d;
}

#define KVINFER_STEP_ARGS                                                                       \
  py::arg("tokens"), py::arg("query_starts"), py::arg("cached_lengths"), py::arg("kv_slots"), \
      py::arg("logit_rows"), py::arg("sampling") = py::none(), py::arg("prev_sample_row") = py::none(), \
      py::arg("block_tables") = py::none(), py::arg("logit_bias") = py::none()

}  // namespace

void bind_runner(py::module_& m) {
  PYBIND11_NUMPY_DTYPE(SamplingArgs, temperature, top_k, top_p, min_p, repetition_penalty, seed, step, bias_start,
                       bias_count, presence_penalty, frequency_penalty, output_start);
  PYBIND11_NUMPY_DTYPE(LogitBias, token, bias);
  m.def("sampling_args_dtype", []() { return py::dtype::of<SamplingArgs>(); },
        "numpy dtype of one row of sampling arguments (types/sampling_args.h)");
  m.def("logit_bias_dtype", []() { return py::dtype::of<LogitBias>(); },
        "numpy dtype of one logit bias (token, bias)");
  m.attr("MAX_LOGIT_BIAS_PER_ROW") = kMaxLogitBiasPerRow;
  // One pass in C over a prompt of ids before its first step (a Python pass costs ~0.1 ms per
  // 2048 ids): the common case only, a list or tuple of exact ints in range; anything else gives
  // None and the caller's general check (which also words the errors).
  m.def(
      "pack_token_ids",
      [](py::handle ids, int64_t vocab_size) -> py::object {
        PyObject* const o = ids.ptr();
        if (!PyList_CheckExact(o) && !PyTuple_CheckExact(o)) return py::none();
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        py::array_t<int32_t> out(static_cast<py::ssize_t>(n));
        int32_t* const dst = out.mutable_data();
        PyObject** const items = PySequence_Fast_ITEMS(o);  // the GIL is held: nothing changes the list
        for (Py_ssize_t i = 0; i < n; ++i) {
          if (!PyLong_CheckExact(items[i])) return py::none();  // bool, numpy integers, ...: the general path
          int overflow = 0;
          const long long id = PyLong_AsLongLongAndOverflow(items[i], &overflow);
          if (overflow || id < 0 || id >= vocab_size) return py::none();
          dst[i] = static_cast<int32_t>(id);
        }
        return std::move(out);
      },
      py::arg("ids"), py::arg("vocab_size"),
      "int32 array of a list or tuple of exact ints in [0, vocab_size), else None.");

  py::class_<Runner>(m, "Runner", "Weights, KV cache and activation buffers of one model; runs steps.")
      .def(py::init([](const ModelConfig& c, const std::string& device, int max_batch, int max_context,
                       int max_step_tokens, std::shared_ptr<VramTracker> tracker, bool cuda_graphs,
                       int num_blocks, int block_size, bool batch_invariant) {
             Device d = Device::parse(device);
             py::gil_scoped_release release;
             return std::make_unique<Runner>(
                 c, d, RunnerShape{max_batch, max_context, max_step_tokens, block_size, num_blocks},
                 std::move(tracker), RunnerOptions{cuda_graphs, batch_invariant});
           }),
           py::arg("config"), py::arg("device") = "cpu", py::arg("max_batch") = 1,
           py::arg("max_context") = 2048, py::arg("max_step_tokens") = 512, py::arg("tracker") = nullptr,
           py::arg("cuda_graphs") = true, py::arg("num_blocks") = 0, py::arg("block_size") = 16,
           py::arg("batch_invariant") = true)
      .def_property_readonly("device", [](const Runner& r) { return r.device().str(); })
      .def_property_readonly("max_batch", [](const Runner& r) { return r.shape().max_batch; })
      .def_property_readonly("max_context", [](const Runner& r) { return r.shape().max_context; })
      .def_property_readonly("max_step_tokens", [](const Runner& r) { return r.shape().max_step_tokens; })
      .def_property_readonly("num_blocks", [](const Runner& r) { return r.cache().num_blocks(); })
      .def_property_readonly("block_size", [](const Runner& r) { return r.shape().block_size; })
      .def_property_readonly("cache", &Runner::cache, py::return_value_policy::reference_internal)
      .def_property_readonly("released", &Runner::released)
      .def_property_readonly("steps_in_flight", &Runner::steps_in_flight)
      .def_property_readonly("graph_stats", [](const Runner& r) { return graph_dict(r.graph_stats()); })
      .def("set_weight", [](Runner& r, const std::string& name, const py::array& a) {
             const py::dtype dt = a.dtype();
             KVINFER_CHECK_ARG(dt.kind() == 'f' && dt.itemsize() == 2 && !dt.attr("isnative").is_none() &&
                                   dt.attr("isnative").cast<bool>(),
                               "weight '", name, "' must be native-endian float16, got ", std::string(py::str(dt)));
             auto c16 = py::array::ensure(a, py::array::c_style);
             std::vector<int64_t> shape(c16.shape(), c16.shape() + c16.ndim());
             const half_t* data = static_cast<const half_t*>(c16.data());
             py::gil_scoped_release release;
             r.set_weight(name, data, shape);
           }, py::arg("name"), py::arg("array"))
      .def("missing_weights", &Runner::missing_weights)
      .def("capture_graphs", [](Runner& r) {
             GraphStats s;
             {
               py::gil_scoped_release release;
               s = r.capture_graphs();
             }
             return graph_dict(s);
           }, "Capture decode steps and prompt steps as CUDA graphs (a no-op on the CPU or with cuda_graphs=False).")
      .def("release", &Runner::release, py::call_guard<py::gil_scoped_release>(),
           "Free weights, KV cache and activations now (waits for the steps in flight).")
      .def("launch", [](Runner& r, Ints tokens, Ints query_starts, Ints cached_lengths, Ints kv_slots,
                        Ints logit_rows, std::optional<Args> sampling, std::optional<Ints> prev_sample_row,
                        std::optional<Ints> block_tables, std::optional<Biases> logit_bias) {
             const PyStep s{tokens, query_starts, cached_lengths, kv_slots, logit_rows, sampling, prev_sample_row,
                            block_tables, logit_bias};
             const StepBatch b = s.batch();
             py::gil_scoped_release release;
             r.launch(b);
           }, KVINFER_STEP_ARGS,
           "Enqueue one step (forward, then sampling when `sampling` is given); returns at once on CUDA.")
      .def("copy_blocks", [](Runner& r, Ints src, Ints dst) {
             KVINFER_CHECK_ARG(src.ndim() == 1 && dst.ndim() == 1 && src.size() == dst.size(),
                               "copy_blocks: src and dst must be 1-D of one length, got ", shape_str(src), " and ",
                               shape_str(dst));
             py::gil_scoped_release release;
             r.copy_blocks(src.data(), dst.data(), static_cast<int>(src.size()));
           }, py::arg("src"), py::arg("dst"),
           "Copy KV-cache blocks src[i] -> dst[i] in every layer (copy-on-write), after the steps in flight.")
      .def("collect", [](Runner& r) {
             std::vector<int32_t> tokens(r.shape().max_batch);
             int rows = 0;
             {
               py::gil_scoped_release release;
               rows = r.collect(tokens.data());
             }
             return py::array_t<int32_t>(rows, tokens.data());
           }, "Wait for the oldest step in flight; its sampled token ids.")
      .def("step", [](Runner& r, Ints tokens, Ints query_starts, Ints cached_lengths, Ints kv_slots,
                      Ints logit_rows, std::optional<Args> sampling, std::optional<Ints> prev_sample_row,
                      std::optional<Ints> block_tables, std::optional<Biases> logit_bias,
                      std::optional<py::array_t<float, py::array::c_style>> logits,
                      std::optional<py::array_t<float, py::array::c_style>> hidden_states) {
             const PyStep s{tokens, query_starts, cached_lengths, kv_slots, logit_rows, sampling, prev_sample_row,
                            block_tables, logit_bias};
             const StepBatch b = s.batch();
             const ModelConfig& c = r.config();
             float* logits_out = nullptr;
             if (logits) {
               KVINFER_CHECK_ARG(logits->ndim() == 2 && logits->shape(0) == b.num_logit_rows &&
                                     logits->shape(1) == c.vocab_size,
                                 "logits must be float32 [", b.num_logit_rows, ", ", c.vocab_size, "], got ",
                                 shape_str(*logits));
               logits_out = logits->mutable_data();
             }
             float* states = nullptr;
             if (hidden_states) {
               KVINFER_CHECK_ARG(hidden_states->ndim() == 3 && hidden_states->shape(0) == c.num_layers + 1 &&
                                     hidden_states->shape(1) == b.num_tokens &&
                                     hidden_states->shape(2) == c.hidden_size,
                                 "hidden_states must be float32 [", c.num_layers + 1, ", ", b.num_tokens, ", ",
                                 c.hidden_size, "], got ", shape_str(*hidden_states));
               states = hidden_states->mutable_data();
             }
             std::vector<int32_t> out(std::max(b.num_logit_rows, 1));
             int rows = 0;
             {
               py::gil_scoped_release release;
               rows = r.step(b, out.data(), logits_out, states);
             }
             return py::array_t<int32_t>(rows, out.data());
           }, KVINFER_STEP_ARGS, py::arg("logits") = py::none(), py::arg("hidden_states") = py::none(),
           "Run one step and wait for it; fills `logits` [R, vocab] and `hidden_states` [layers + 1, T, "
           "hidden] when given. Returns the sampled ids (empty without `sampling`).");
}

}  // namespace kvinfer::bindings
