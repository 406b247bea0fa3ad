"""Built-in config.json contents of common models, so `kvinfer vram --model llama-3-8b` needs no
download. Values are the published configs' (architecture-relevant keys only)."""

from __future__ import annotations

import difflib


def _llama(hidden, inter, layers, heads, kv, vocab, positions, theta, tied, head_dim=None, **extra):
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "vocab_size": vocab, "max_position_embeddings": positions, "rope_theta": theta,
           "tie_word_embeddings": tied, "rms_norm_eps": 1e-5, "hidden_act": "silu"}
    if head_dim:
        cfg["head_dim"] = head_dim
    cfg.update(extra)
    return cfg


def _qwen3(hidden, inter, layers, heads, tied):
    return dict(_llama(hidden, inter, layers, heads, 8, 151936, 40960, 1000000.0, tied, 128, rms_norm_eps=1e-6),
                architectures=["Qwen3ForCausalLM"])


def _gemma(hidden, inter, layers, heads, kv, head_dim, gemma2=True, **extra):
    cfg = {"architectures": ["Gemma2ForCausalLM" if gemma2 else "GemmaForCausalLM"], "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "head_dim": head_dim, "vocab_size": 256000, "max_position_embeddings": 8192,
           "rope_theta": 10000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-6}
    if gemma2:
        cfg.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=4096,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    else:
        cfg["hidden_act"] = "gelu_pytorch_tanh"
    cfg.update(extra)
    return cfg


def _gpt2(embd, layers, heads):
    return {"architectures": ["GPT2LMHeadModel"], "n_embd": embd, "n_layer": layers, "n_head": heads,
            "n_positions": 1024, "vocab_size": 50257, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new"}


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

MODELS: dict[str, dict] = {
    "gemma-2b": _gemma(2048, 16384, 18, 8, 1, 256, gemma2=False),
    "gemma-7b": _gemma(3072, 24576, 28, 16, 16, 256, gemma2=False),
    "gemma-2-2b": _gemma(2304, 9216, 26, 8, 4, 256),
    "gemma-2-9b": _gemma(3584, 14336, 42, 16, 8, 256),
    "gemma-2-27b": _gemma(4608, 36864, 46, 32, 16, 128, query_pre_attn_scalar=144),
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "llama-2-7b": _llama(4096, 11008, 32, 32, 32, 32000, 4096, 10000.0, False),
    "llama-3-8b": _llama(4096, 14336, 32, 32, 8, 128256, 8192, 500000.0, False),
    "llama-3-70b": _llama(8192, 28672, 80, 64, 8, 128256, 8192, 500000.0, False),
    "llama-3.2-1b": _llama(2048, 8192, 16, 32, 8, 128256, 131072, 500000.0, True, 64, rope_scaling=_LLAMA3_ROPE),
    "llama-3.2-3b": _llama(3072, 8192, 28, 24, 8, 128256, 131072, 500000.0, True, 128, rope_scaling=_LLAMA3_ROPE),
    "qwen2.5-0.5b": dict(_llama(896, 4864, 24, 14, 2, 151936, 32768, 1000000.0, True, rms_norm_eps=1e-6),
                         architectures=["Qwen2ForCausalLM"]),
    "qwen2.5-1.5b": dict(_llama(1536, 8960, 28, 12, 2, 151936, 32768, 1000000.0, True, rms_norm_eps=1e-6),
                         architectures=["Qwen2ForCausalLM"]),
    "qwen2.5-7b": dict(_llama(3584, 18944, 28, 28, 4, 152064, 32768, 1000000.0, False, rms_norm_eps=1e-6),
                       architectures=["Qwen2ForCausalLM"]),
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, False),
    "phi-3-mini-4k": dict(_llama(3072, 8192, 32, 32, 32, 32064, 4096, 10000.0, False, sliding_window=2047),
                          architectures=["Phi3ForCausalLM"]),
    "phi-4": dict(_llama(5120, 17920, 40, 40, 10, 100352, 16384, 250000.0, False), architectures=["Phi3ForCausalLM"]),
    "mistral-7b": dict(_llama(4096, 14336, 32, 32, 8, 32000, 32768, 10000.0, False, sliding_window=4096),
                       architectures=["MistralForCausalLM"]),
    "smollm2-135m": _llama(576, 1536, 30, 9, 3, 49152, 8192, 100000.0, True),
    "smollm2-360m": _llama(960, 2560, 32, 15, 5, 49152, 8192, 100000.0, True),
    "smollm2-1.7b": _llama(2048, 8192, 24, 32, 32, 49152, 8192, 130000.0, True),
}


def builtin_config(name: str) -> dict:
    key = name.lower()
    if key in MODELS:
        return dict(MODELS[key])
    close = difflib.get_close_matches(key, MODELS, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(MODELS)}"
    raise ValueError(f"unknown model name {name!r}{hint}")
