"""Hugging Face tensor names -> kvinfer's weight names (see cpp/model_config.h), with the
transforms each architecture needs: GPT-2's Conv1D matrices are stored [in, out] and are
transposed; Q/K/V and gate/up projections are concatenated into one matrix each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvinfer import _core
from kvinfer.safetensors_io import SafetensorsFolder


@dataclass(frozen=True)
class Source:
    target: str                          # kvinfer weight name
    parts: tuple[str, ...]               # HF tensor names, concatenated along rows in this order
    shapes: tuple[tuple[int, ...], ...]  # expected HF shape of each part
    transpose: bool = False              # Conv1D [in, out] -> [out, in]


def _llama_sources(c: _core.ModelConfig) -> list[Source]:
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


def _gpt2_sources(c: _core.ModelConfig, prefix: str) -> list[Source]:
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


def weight_sources(c: _core.ModelConfig, names: set[str] | None = None) -> list[Source]:
    """Where each kvinfer weight comes from. `names` (the checkpoint's tensor names) picks GPT-2's
    prefix: GPT2LMHeadModel checkpoints say "transformer.h.0...", bare GPT2Model ones "h.0..."."""
    if c.architecture == "GPT2LMHeadModel":
        prefix = "transformer." if names is None or "transformer.wte.weight" in names else ""
        return _gpt2_sources(c, prefix)
    return _llama_sources(c)


def check_checkpoint(files: SafetensorsFolder, config: _core.ModelConfig) -> list[Source]:
    """Every tensor the model needs is present with the right shape (headers only, no data)."""
    sources = weight_sources(config, set(files.tensors))
    for src in sources:
        for name, shape in zip(src.parts, src.shapes):
            info = files.info(name)
            if info.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {info.shape}, expected {shape}")
    return sources


def load_weights(engine: _core.Engine, config: _core.ModelConfig, folder: str, progress: bool = False) -> None:
    """Reads every tensor the model needs from `folder` into the engine's weight allocation."""
    files = SafetensorsFolder(folder)
    sources = check_checkpoint(files, config)  # before reading any data
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="loading weights", unit="tensor", leave=False)
    try:
        for src in sources:
            arrays = [files.read_float16(name) for name in src.parts]
            if src.transpose:
                arrays = [a.T for a in arrays]
            array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            engine.set_weight(src.target, np.ascontiguousarray(array))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        files.close()
    missing = engine.missing_weights()
    if missing:
        raise ValueError(f"weights not loaded: {', '.join(missing[:5])}")
