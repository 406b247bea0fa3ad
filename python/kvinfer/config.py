"""config.json -> the native ModelConfig, for the supported architectures.

GPT2LMHeadModel: LayerNorm, learned positions, gelu_new MLP, tied head.
LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM: RMSNorm, RoPE (default, linear, llama3),
GQA, SwiGLU; Qwen2 adds QKV biases. Both the transformers-4 keys (rope_theta, rope_scaling) and the
transformers-5 key (rope_parameters) are read.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kvinfer import _core

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM"}


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a model folder (or the file itself) as a dict, with clear errors."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.json not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def architecture_of(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else _MODEL_TYPES.get(cfg.get("model_type", ""), cfg.get("model_type"))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _get(cfg: dict[str, Any], key: str, default: Any = None, *, required: bool = True) -> Any:
    value = cfg.get(key, default)
    if value is None and required:
        raise ValueError(f"config.json lacks {key!r}")
    return value


def _rope(cfg: dict[str, Any]) -> tuple[float, _core.RopeScaling]:
    params = cfg.get("rope_parameters") or {}
    scaling_cfg = cfg.get("rope_scaling") or params
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = _core.RopeScaling()
    kind = scaling_cfg.get("rope_type", scaling_cfg.get("type", "default")) if scaling_cfg else "default"
    if kind in ("default", None):
        return theta, scaling
    if kind not in ("linear", "llama3"):
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")
    scaling.type = kind
    scaling.factor = float(scaling_cfg["factor"])
    if kind == "llama3":
        scaling.low_freq_factor = float(scaling_cfg["low_freq_factor"])
        scaling.high_freq_factor = float(scaling_cfg["high_freq_factor"])
        scaling.original_max_positions = int(scaling_cfg["original_max_position_embeddings"])
    return theta, scaling


def model_config(cfg: dict[str, Any]) -> _core.ModelConfig:
    """The native ModelConfig for a config.json dict; ValueError names what is unsupported."""
    arch = architecture_of(cfg)
    c = _core.ModelConfig()
    c.architecture = arch
    c.vocab_size = int(_get(cfg, "vocab_size"))
    if arch == "GPT2LMHeadModel":
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation_function {act!r} is not supported (supported: gelu_new)")
        if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("scale_attn_weights") is False:
            raise ValueError("GPT-2 attention scaling options other than the default are not supported")
        c.hidden_size = int(_get(cfg, "n_embd"))
        c.num_layers = int(_get(cfg, "n_layer"))
        c.num_heads = c.num_kv_heads = int(_get(cfg, "n_head"))
        c.head_dim = c.hidden_size // c.num_heads
        c.intermediate_size = int(cfg.get("n_inner") or 4 * c.hidden_size)
        c.max_positions = int(_get(cfg, "n_positions"))
        c.norm_eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        c.norm, c.mlp, c.positions = "layer", "gelu_new", "learned"
        c.norm_bias = c.qkv_bias = c.o_bias = c.mlp_bias = True
        c.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", True))
    else:
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (supported: silu)")
        c.hidden_size = int(_get(cfg, "hidden_size"))
        c.num_layers = int(_get(cfg, "num_hidden_layers"))
        c.num_heads = int(_get(cfg, "num_attention_heads"))
        c.num_kv_heads = int(cfg.get("num_key_value_heads") or c.num_heads)
        c.head_dim = int(cfg.get("head_dim") or c.hidden_size // c.num_heads)
        c.intermediate_size = int(_get(cfg, "intermediate_size"))
        c.max_positions = int(_get(cfg, "max_position_embeddings"))
        c.norm_eps = float(cfg.get("rms_norm_eps", 1e-6))
        c.rope_theta, c.rope_scaling = _rope(cfg)
        c.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", False))
        bias = bool(cfg.get("attention_bias", False))
        c.qkv_bias = bias or arch == "Qwen2ForCausalLM"
        c.o_bias = bias
        c.mlp_bias = bool(cfg.get("mlp_bias", False))
    c.validate()
    return c


def attention_window(cfg: dict[str, Any]) -> int | None:
    """Sliding-window size when the model uses one (Mistral, Qwen2 with use_sliding_window): the
    engine computes full attention, which equals the model only within the window."""
    arch = architecture_of(cfg)
    if arch == "MistralForCausalLM":
        return cfg.get("sliding_window")
    if arch == "Qwen2ForCausalLM" and cfg.get("use_sliding_window"):
        return cfg.get("sliding_window")
    return None
