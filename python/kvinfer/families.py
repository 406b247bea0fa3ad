"""Model families: for each one, how its config.json maps onto kvinfer's ModelConfig (the
description) and which checkpoint tensors make each kvinfer weight (the weight map). Everything
the engine does differently per family is in those ModelConfig fields; the layer recipe itself is
written once (cpp/model/decoder.cpp). Adding a family is one Family here plus tests.

kvinfer's weight names (cpp/model/model_config.h): embed, pos_embed, layers.{i}.attn_norm.weight,
layers.{i}.qkv.weight (Q, K and V rows in one matrix), layers.{i}.q_norm.weight and
layers.{i}.k_norm.weight (q/k-norm), layers.{i}.o.weight, layers.{i}.post_attn_norm.weight (post-norms),
layers.{i}.mlp_norm.weight, layers.{i}.gate_up.weight (gate rows, then up rows) or
layers.{i}.fc.weight, layers.{i}.down.weight, layers.{i}.post_mlp_norm.weight (post-norms), the
biases beside them, final_norm.weight, lm_head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from kvinfer import _core


@dataclass(frozen=True)
class Source:
    target: str                          # kvinfer weight name
    parts: tuple[str, ...]               # checkpoint tensor names, concatenated along rows in this order
    shapes: tuple[tuple[int, ...], ...]  # expected checkpoint shape of each part
    transpose: bool = False              # stored [in, out] (GPT-2's Conv1D) -> [out, in]
    plus: float = 0.0                    # added to every value (Gemma's RMSNorm weights: offsets from 1)


@dataclass(frozen=True)
class Family:
    architectures: tuple[str, ...]   # config.json "architectures" names
    model_types: tuple[str, ...]     # config.json "model_type" names
    describe: Callable[[dict[str, Any], _core.ModelConfig], None]  # fills the ModelConfig
    weights: Callable[[_core.ModelConfig, set[str]], list[Source]]
    window: Callable[[dict[str, Any]], int | None] = lambda cfg: None  # sliding-window size, if any


def _get(cfg: dict[str, Any], key: str, default: Any = None, *, required: bool = True) -> Any:
    value = cfg.get(key)
    if value is None:  # absent or null
        value = default
    if value is None and required:
        raise ValueError(f"config.json lacks {key!r}")
    return value


INT32_MAX = 2**31 - 1


def _int(cfg: dict[str, Any], key: str, default: Any = None, *, minimum: int = 1) -> int:
    """An integer field in [minimum, 2^31 - 1]: 192.7, "8" or true are errors, never truncated."""
    value = _get(cfg, key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT32_MAX:
        raise ValueError(f"config.json {key}={value!r} must be an integer in [{minimum}, {INT32_MAX}]")
    return value


def _float(cfg: dict[str, Any], key: str, default: Any = None, *, positive: bool = True) -> float:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"config.json {key}={value!r} must be a finite number{' > 0' if positive else ''}")
    return float(value)


def _rope(cfg: dict[str, Any], c: _core.ModelConfig) -> None:
    """rope_theta and rope_scaling, from the transformers-4 keys or transformers-5 rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    scaling_cfg = cfg.get("rope_scaling") or params
    if not isinstance(params, dict) or not isinstance(scaling_cfg, dict):
        raise ValueError("config.json rope_parameters / rope_scaling must be objects")
    c.rope_theta = _float(params if "rope_theta" in params else cfg, "rope_theta", 10000.0)
    kind = scaling_cfg.get("rope_type", scaling_cfg.get("type", "default")) if scaling_cfg else "default"
    if kind in ("default", None):
        return
    if kind not in ("linear", "llama3"):
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")
    scaling = _core.RopeScaling()
    scaling.type = kind
    scaling.factor = _float(scaling_cfg, "factor")
    if kind == "llama3":
        scaling.low_freq_factor = _float(scaling_cfg, "low_freq_factor")
        scaling.high_freq_factor = _float(scaling_cfg, "high_freq_factor")
        scaling.original_max_positions = _int(scaling_cfg, "original_max_position_embeddings")
    c.rope_scaling = scaling


# ---- Llama, Mistral, Qwen2, Qwen3: RMSNorm, RoPE, GQA, SwiGLU --------------------------------------
def _describe_llama(cfg: dict[str, Any], c: _core.ModelConfig, qkv_bias: bool = False) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported (supported: silu)")
    _llama_shape(cfg, c, qkv_bias)


def _llama_shape(cfg: dict[str, Any], c: _core.ModelConfig, qkv_bias: bool = False) -> None:
    c.hidden_size = _int(cfg, "hidden_size")
    c.num_layers = _int(cfg, "num_hidden_layers")
    c.num_heads = _int(cfg, "num_attention_heads")
    c.num_kv_heads = _int(cfg, "num_key_value_heads", c.num_heads)
    c.head_dim = _int(cfg, "head_dim", c.hidden_size // c.num_heads)
    c.intermediate_size = _int(cfg, "intermediate_size")
    c.max_positions = _int(cfg, "max_position_embeddings")
    c.norm_eps = _float(cfg, "rms_norm_eps", 1e-6)
    _rope(cfg, c)
    c.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", False))
    bias = bool(cfg.get("attention_bias", False))
    c.qkv_bias = bias or qkv_bias
    c.o_bias = bias
    c.mlp_bias = bool(cfg.get("mlp_bias", False))


def _llama_weights(c: _core.ModelConfig, names: set[str]) -> list[Source]:
    H, d = c.hidden_size, c.head_dim
    q, kv, inter = c.num_heads * d, c.num_kv_heads * d, c.intermediate_size
    out = [Source("embed", ("model.embed_tokens.weight",), ((c.vocab_size, H),))]
    for i in range(c.num_layers):
        p, t = f"model.layers.{i}.", f"layers.{i}."
        attn = [p + f"self_attn.{x}_proj" for x in "qkv"]
        mlp = [p + "mlp.gate_proj", p + "mlp.up_proj"]
        out += [
            Source(t + "attn_norm.weight", (p + "input_layernorm.weight",), ((H,),)),
            Source(t + "qkv.weight", tuple(a + ".weight" for a in attn), ((q, H), (kv, H), (kv, H))),
            Source(t + "o.weight", (p + "self_attn.o_proj.weight",), ((H, q),)),
            Source(t + "mlp_norm.weight", (p + "post_attention_layernorm.weight",), ((H,),)),
            Source(t + "gate_up.weight", tuple(m + ".weight" for m in mlp), ((inter, H), (inter, H))),
            Source(t + "down.weight", (p + "mlp.down_proj.weight",), ((H, inter),)),
        ]
        if c.qk_norm:  # Qwen3
            out += [Source(t + f"{x}_norm.weight", (p + f"self_attn.{x}_norm.weight",), ((d,),)) for x in "qk"]
        if c.qkv_bias:
            out.append(Source(t + "qkv.bias", tuple(a + ".bias" for a in attn), ((q,), (kv,), (kv,))))
        if c.o_bias:
            out.append(Source(t + "o.bias", (p + "self_attn.o_proj.bias",), ((H,),)))
        if c.mlp_bias:
            out.append(Source(t + "gate_up.bias", tuple(m + ".bias" for m in mlp), ((inter,), (inter,))))
            out.append(Source(t + "down.bias", (p + "mlp.down_proj.bias",), ((H,),)))
    out.append(Source("final_norm.weight", ("model.norm.weight",), ((H,),)))
    if not c.tie_word_embeddings:
        out.append(Source("lm_head", ("lm_head.weight",), ((c.vocab_size, H),)))
    return out


def _describe_qwen3(cfg: dict[str, Any], c: _core.ModelConfig) -> None:
    # (transformers' Qwen3Config defaults, where Llama's derive them)
    _describe_llama({"head_dim": 128, "num_key_value_heads": 32, **cfg}, c)
    c.qk_norm = True


def _qwen_window(cfg: dict[str, Any]) -> int | None:
    """Qwen2/3 window the layers named so in layer_types, else those from max_window_layers (default
    28) on, and only with use_sliding_window."""
    if not cfg.get("use_sliding_window"):
        return None
    types, first, layers = cfg.get("layer_types"), cfg.get("max_window_layers", 28), cfg.get("num_hidden_layers")
    if isinstance(types, list):
        windowed = "sliding_attention" in types
    else:
        windowed = not (isinstance(first, int) and isinstance(layers, int) and first >= layers)
    return cfg.get("sliding_window") if windowed else None


def _describe_phi3(cfg: dict[str, Any], c: _core.ModelConfig) -> None:
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial not in (1, 1.0, None):
        raise ValueError(f"partial_rotary_factor={partial!r} is not supported (RoPE over the whole head only)")
    _describe_llama(cfg, c)


def _phi3_weights(c: _core.ModelConfig, names: set[str]) -> list[Source]:
    """Llama's map with Phi-3's fused tensors: qkv_proj (Q, K, V rows) and gate_up_proj (gate, then
    up rows) are already kvinfer's layout."""
    H, qkv = c.hidden_size, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    fused = {}
    for i in range(c.num_layers):
        p, t = f"model.layers.{i}.", f"layers.{i}."
        fused[t + "qkv.weight"] = Source(t + "qkv.weight", (p + "self_attn.qkv_proj.weight",), ((qkv, H),))
        fused[t + "gate_up.weight"] = Source(t + "gate_up.weight", (p + "mlp.gate_up_proj.weight",),
                                             ((2 * c.intermediate_size, H),))
    return [fused.get(s.target, s) for s in _llama_weights(c, names)]


# ---- Gemma, Gemma 2: Llama's layer with GeGLU, the embedding times sqrt(hidden), RMSNorm weights ----
# stored as offsets from 1; Gemma 2 adds norms after attention and the MLP, a query scale of its
# own, soft-capped attention scores and logits, and a sliding window on every other layer.
def _describe_gemma(cfg: dict[str, Any], c: _core.ModelConfig) -> None:
    # transformers reads Gemma's "gelu" as the tanh approximation; Gemma 2 takes hidden_activation as named
    act = cfg.get("hidden_act") or cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new"):
        raise ValueError(f"Gemma hidden_act {act!r} is not supported (supported: gelu_pytorch_tanh)")
    _llama_shape({"head_dim": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, **cfg}, c)
    c.mlp = "geglu"
    c.embed_scale = math.sqrt(c.hidden_size)


def _describe_gemma2(cfg: dict[str, Any], c: _core.ModelConfig) -> None:
    act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_new"):
        raise ValueError(f"Gemma 2 hidden_activation {act!r} is not supported (supported: gelu_pytorch_tanh)")
    # (transformers' Gemma2Config defaults where the keys are absent)
    _describe_gemma({"num_key_value_heads": 4, **cfg, "hidden_act": "gelu_pytorch_tanh"}, c)
    c.post_norms = True
    c.attn_scale = _float(cfg, "query_pre_attn_scalar", 256) ** -0.5
    for key, field, default in (("attn_logit_softcapping", "attn_softcap", 50.0),
                                ("final_logit_softcapping", "logit_softcap", 30.0)):
        cap = cfg.get(key, default)
        setattr(c, field, 0.0 if cap is None else _float({key: cap}, key))


def _gemma2_window(cfg: dict[str, Any]) -> int | None:
    """Gemma 2 windows the layers named so in layer_types (by default every other one, from the first)."""
    types = cfg.get("layer_types")
    windowed = "sliding_attention" in types if isinstance(types, list) else True
    return cfg.get("sliding_window", 4096) if windowed else None


def _gemma_weights(c: _core.ModelConfig, names: set[str]) -> list[Source]:
    """Llama's map with every RMSNorm weight plus 1; with post-norms, Gemma 2's four norms a layer:
    its post_attention_layernorm norms the attention output, pre_feedforward_layernorm the MLP input."""
    out = []
    for s in _llama_weights(c, names):
        if s.target.endswith("norm.weight"):
            part = s.parts[0]
            if c.post_norms and s.target.endswith("mlp_norm.weight"):
                part = part.replace("post_attention_layernorm", "pre_feedforward_layernorm")
            s = Source(s.target, (part,), s.shapes, plus=1.0)
        out.append(s)
    for i in range(c.num_layers if c.post_norms else 0):
        p, t, H = f"model.layers.{i}.", f"layers.{i}.", (c.hidden_size,)
        out += [Source(t + "post_attn_norm.weight", (p + "post_attention_layernorm.weight",), (H,), plus=1.0),
                Source(t + "post_mlp_norm.weight", (p + "post_feedforward_layernorm.weight",), (H,), plus=1.0)]
    return out


# ---- GPT-2: LayerNorm, learned positions, gelu_new, Conv1D weights ---------------------------------
def _describe_gpt2(cfg: dict[str, Any], c: _core.ModelConfig) -> None:
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported (supported: gelu_new)")
    if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("scale_attn_weights") is False:
        raise ValueError("GPT-2 attention scaling options other than the default are not supported")
    c.hidden_size = _int(cfg, "n_embd")
    c.num_layers = _int(cfg, "n_layer")
    c.num_heads = c.num_kv_heads = _int(cfg, "n_head")
    c.head_dim = c.hidden_size // c.num_heads
    c.intermediate_size = _int(cfg, "n_inner", 4 * c.hidden_size)
    c.max_positions = _int(cfg, "n_positions")
    c.norm_eps = _float(cfg, "layer_norm_epsilon", 1e-5)
    c.norm, c.mlp, c.positions = "layer", "gelu_new", "learned"
    c.norm_bias = c.qkv_bias = c.o_bias = c.mlp_bias = True
    c.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", True))


def _gpt2_weights(c: _core.ModelConfig, names: set[str]) -> list[Source]:
    # GPT2LMHeadModel checkpoints say "transformer.h.0...", bare GPT2Model ones "h.0...".
    prefix = "transformer." if not names or "transformer.wte.weight" in names else ""
    H, inter = c.hidden_size, c.intermediate_size
    out = [Source("embed", (prefix + "wte.weight",), ((c.vocab_size, H),)),
           Source("pos_embed", (prefix + "wpe.weight",), ((c.max_positions, H),))]
    for i in range(c.num_layers):
        p, t = f"{prefix}h.{i}.", f"layers.{i}."
        out += [
            Source(t + "attn_norm.weight", (p + "ln_1.weight",), ((H,),)),
            Source(t + "attn_norm.bias", (p + "ln_1.bias",), ((H,),)),
            Source(t + "qkv.weight", (p + "attn.c_attn.weight",), ((H, 3 * H),), transpose=True),
            Source(t + "qkv.bias", (p + "attn.c_attn.bias",), ((3 * H,),)),
            Source(t + "o.weight", (p + "attn.c_proj.weight",), ((H, H),), transpose=True),
            Source(t + "o.bias", (p + "attn.c_proj.bias",), ((H,),)),
            Source(t + "mlp_norm.weight", (p + "ln_2.weight",), ((H,),)),
            Source(t + "mlp_norm.bias", (p + "ln_2.bias",), ((H,),)),
            Source(t + "fc.weight", (p + "mlp.c_fc.weight",), ((H, inter),), transpose=True),
            Source(t + "fc.bias", (p + "mlp.c_fc.bias",), ((inter,),)),
            Source(t + "down.weight", (p + "mlp.c_proj.weight",), ((inter, H),), transpose=True),
            Source(t + "down.bias", (p + "mlp.c_proj.bias",), ((H,),)),
        ]
    out += [Source("final_norm.weight", (prefix + "ln_f.weight",), ((H,),)),
            Source("final_norm.bias", (prefix + "ln_f.bias",), ((H,),))]
    if not c.tie_word_embeddings:
        out.append(Source("lm_head", ("lm_head.weight",), ((c.vocab_size, H),)))
    return out


FAMILIES = (
    Family(("LlamaForCausalLM",), ("llama",), _describe_llama, _llama_weights),
    # Mistral: full attention equals its sliding window attention within the window, so the
    # context is capped there.
    Family(("MistralForCausalLM",), ("mistral",), _describe_llama, _llama_weights,
           window=lambda cfg: cfg.get("sliding_window")),
    Family(("Qwen2ForCausalLM",), ("qwen2",), lambda cfg, c: _describe_llama(cfg, c, qkv_bias=True),
           _llama_weights, window=_qwen_window),
    # Qwen3: Qwen2's layer without the q/k/v biases, with an RMSNorm of each q and k head before RoPE
    Family(("Qwen3ForCausalLM",), ("qwen3",), _describe_qwen3, _llama_weights, window=_qwen_window),
    # Phi-3, Phi-4: Llama's layer with fused QKV and gate/up tensors; windowed whenever sliding_window is set
    Family(("Phi3ForCausalLM",), ("phi3",), _describe_phi3, _phi3_weights, window=lambda cfg: cfg.get("sliding_window")),
    Family(("GemmaForCausalLM",), ("gemma",), _describe_gemma, _gemma_weights),
    # Gemma 2: windowed layers compute full attention, which equals the window within it (as Mistral)
    Family(("Gemma2ForCausalLM",), ("gemma2",), _describe_gemma2, _gemma_weights, window=_gemma2_window),
    Family(("GPT2LMHeadModel",), ("gpt2",), _describe_gpt2, _gpt2_weights),
)
SUPPORTED_ARCHITECTURES = tuple(a for f in FAMILIES for a in f.architectures)


def family_by_architecture(architecture: str) -> Family:
    return family_of({"architectures": [architecture]})[1]


def family_of(cfg: dict[str, Any]) -> tuple[str, Family]:
    """(architecture name, Family) of a config.json dict; ValueError when it is not supported."""
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type", "")
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"config.json architectures={archs!r} must be a list of class names")
    for f in FAMILIES:
        if (archs and archs[0] in f.architectures) or (not archs and model_type in f.model_types):
            return (archs[0] if archs else f.architectures[0]), f
    name = archs[0] if archs else model_type
    raise ValueError(f"unsupported architecture {name!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}")
