"""GGUF (llama architecture) -> Hugging Face folder: fp16 model.safetensors, config.json,
tokenizer.json (built with the `tokenizers` library), tokenizer_config.json (chat template, special
tokens) and generation_config.json. F32/F16/Q8_0/Q4_0/Q4_1 tensors are dequantised with the `gguf`
package; Q and K rows are put back in Hugging Face's order (llama.cpp interleaves the rotary halves
of each head)."""

from __future__ import annotations

import json
import os

import numpy as np

SUPPORTED_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Split patterns of llama.cpp pre-tokenizer names, as the tokenizers library spells them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's permute: rows (head, pair, half) -> (head, half, pair)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: llama)")
    g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "head_dim": int(g("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(g("context_length", 2048)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "vocab_size": int(g("vocab_size", len(tokens))), "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names, "torch_dtype": "float16",
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }
    scaling = g("rope.scaling.type")
    if scaling == "linear":
        cfg["rope_scaling"] = {"type": "linear", "factor": float(g("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported (supported: linear)")
    return cfg


def gguf_tensors(reader, cfg: dict, progress: bool = False):
    """Yields (Hugging Face name, float16 array) for every tensor of the file."""
    from gguf import quants

    tensors = reader.tensors
    if progress:
        from tqdm import tqdm

        tensors = tqdm(tensors, desc="converting GGUF", unit="tensor", leave=False)
    for t in tensors:
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise ValueError(f"GGUF tensor {t.name!r} has type {kind}; supported: {', '.join(SUPPORTED_TYPES)}")
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            if rest not in _NAMES:
                raise ValueError(f"GGUF tensor {t.name!r} is not part of the llama architecture")
            if rest == "attn_q.weight":
                w = unpermute_rotary(w, cfg["num_attention_heads"])
            elif rest == "attn_k.weight":
                w = unpermute_rotary(w, cfg["num_key_value_heads"])
            name = f"model.layers.{layer}.{_NAMES[rest]}"
        elif t.name in _NAMES:
            name = _NAMES[t.name]
        else:
            raise ValueError(f"GGUF tensor {t.name!r} is not part of the llama architecture")
        yield name, w.astype(np.float16)


def gguf_tokenizer(reader):
    """(tokenizers.Tokenizer, tokenizer_config dict) for a byte-level BPE ('gpt2') vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2 byte-level BPE)")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # llama.cpp: every digit alone, then the GPT-2 split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    if user:
        tok.add_tokens(user)
    token = lambda key: tokens[_field(reader, key)] if _field(reader, key) is not None else None  # noqa: E731
    bos = token("tokenizer.ggml.bos_token_id")
    if _field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tokens.index(bos))])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
        "bos_token": bos, "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"), "pad_token": token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tok, config


def _check_out_dir(out_dir: str) -> None:
    """The output folder must be new or empty, and writable."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty: converting into it would mix files")
    parent = out_dir if os.path.isdir(out_dir) else os.path.dirname(os.path.abspath(out_dir))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{out_dir} cannot be written ({parent} is not writable)")


def convert_gguf(path: str, out_dir: str, progress: bool = False) -> None:
    """Writes a Hugging Face model folder for the GGUF file `path` into `out_dir`."""
    import gguf
    from safetensors.numpy import save_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    _check_out_dir(out_dir)  # before the slow part: fail early
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/KeyError/struct errors on bad files
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from None
    try:
        cfg = gguf_config(reader)
        tokenizer, tok_cfg = gguf_tokenizer(reader)
        tensors = dict(gguf_tensors(reader, cfg, progress))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - the file is untrusted; the gguf, numpy and tokenizers
        # readers raise TypeError, KeyError, IndexError or bare Exception on malformed content
        raise ValueError(f"{path}: malformed GGUF content ({type(e).__name__}: {e})") from None
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    for name, obj in (("config.json", cfg), ("tokenizer_config.json", tok_cfg), ("generation_config.json", gen)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
