// Bindings: ModelConfig, RopeScaling and the size formulas the memory planner uses.
#include "bindings/bindings.h"
#include "core/errors.h"
#include "model/model_config.h"
#include "runtime/activations.h"
#include "runtime/backend.h"

namespace kvinfer::bindings {

void bind_model(py::module_& m) {
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
      .def_readwrite("qk_norm", &ModelConfig::qk_norm)
      .def_readwrite("post_norms", &ModelConfig::post_norms)
      .def_readwrite("embed_scale", &ModelConfig::embed_scale)
      .def_readwrite("attn_scale", &ModelConfig::attn_scale)
      .def_readwrite("attn_softcap", &ModelConfig::attn_softcap)
      .def_readwrite("logit_softcap", &ModelConfig::logit_softcap)
      .def_property("norm",
          [](const ModelConfig& c) { return c.norm == NormKind::RMSNorm ? "rms" : "layer"; },
          [](ModelConfig& c, const std::string& v) {
            KVINFER_CHECK_ARG(v == "rms" || v == "layer", "norm='", v, "' is not 'rms' or 'layer'");
            c.norm = v == "rms" ? NormKind::RMSNorm : NormKind::LayerNorm;
          })
      .def_property("mlp",
          [](const ModelConfig& c) {
            return c.mlp == MlpKind::SwiGLU ? "swiglu" : c.mlp == MlpKind::GeGLU ? "geglu" : "gelu_new";
          },
          [](ModelConfig& c, const std::string& v) {
            KVINFER_CHECK_ARG(v == "swiglu" || v == "geglu" || v == "gelu_new", "mlp='", v,
                              "' is not 'swiglu', 'geglu' or 'gelu_new'");
            c.mlp = v == "swiglu" ? MlpKind::SwiGLU : v == "geglu" ? MlpKind::GeGLU : MlpKind::GeluNew;
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

  m.def("cuda_unsupported", &cuda_unsupported, py::arg("config"),
        "Why the CUDA backend cannot run this model, or '' where it can (device='auto' then takes the CPU).");
  m.def("activation_bytes", [](const ModelConfig& c, int max_batch, int max_context, int max_step_tokens,
                                const std::string& device) {
          return activation_layout(c, RunnerShape{max_batch, max_context, max_step_tokens}, device_kind(device)).total;
        }, py::arg("config"), py::arg("max_batch"), py::arg("max_context"), py::arg("max_step_tokens"),
        py::arg("device") = "cpu",
        "Bytes of the activation buffers a Runner of this shape allocates on that device kind.");
  m.def("gemm_workspace_bytes", [](const std::string& device) { return gemm_workspace_bytes(device_kind(device)); },
        py::arg("device") = "cpu");
}

}  // namespace kvinfer::bindings
