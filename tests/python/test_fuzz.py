"""Property-based fuzzing (hypothesis, fixed seed, bounded examples) of what reads untrusted input:
the safetensors header parser, config.json parsing, GGUF conversion, SamplingParams and KVCache
arguments. The property: a documented exception (ValueError, IndexError, FileNotFoundError,
MemoryError) or a correct result; the process stays alive and the tracker goes back to zero."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import kvinfer  # noqa: E402
from kvinfer.config import model_config  # noqa: E402
from kvinfer.safetensors_io import read_header  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402

DOCUMENTED = (ValueError, IndexError, FileNotFoundError, MemoryError)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def documented_or_result(fn):
    try:
        return fn()
    except DOCUMENTED:
        return None


# ---- safetensors headers ------------------------------------------------------------------------
def safetensors_bytes(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=10), json_values, max_size=5), data=st.binary(max_size=64),
       length=st.none() | st.integers(0, 2**64 - 1))
def test_safetensors_header_parser(tmp_path, header, data, length):
    path = tmp_path / "x.safetensors"
    path.write_bytes(safetensors_bytes(header, data, length))
    out = documented_or_result(lambda: read_header(str(path)))
    if out is not None:  # what it accepts is consistent with the file
        for info in out.values():
            assert 0 <= info.begin <= info.end <= os.path.getsize(path)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_safetensors_garbage(tmp_path, raw):
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    documented_or_result(lambda: read_header(str(path)))


# ---- config.json --------------------------------------------------------------------------------
BASE = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
keys = st.sampled_from(sorted(BASE) + ["head_dim", "rope_scaling", "rope_parameters", "attention_bias",
                                       "tie_word_embeddings", "hidden_act", "model_type", "n_embd"])


@FUZZ
@given(changes=st.dictionaries(keys, json_values, max_size=4))
def test_config_parsing(changes):
    cfg = {**BASE, **changes}
    c = documented_or_result(lambda: model_config(cfg))
    if c is not None:  # what it accepts is a valid model
        c.validate()
        assert c.hidden_size >= 1 and c.num_heads % c.num_kv_heads == 0 and c.vocab_size >= 1


@FUZZ
@given(arch=st.sampled_from(["GPT2LMHeadModel", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
                             "MistralForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM"]),
       changes=st.dictionaries(st.sampled_from(["n_embd", "n_layer", "n_head", "n_positions", "sliding_window",
                                                "use_sliding_window", "layer_norm_epsilon", "n_inner",
                                                "query_pre_attn_scalar", "attn_logit_softcapping",
                                                "final_logit_softcapping", "hidden_activation", "layer_types"]),
                               json_values, max_size=4))
def test_other_families(arch, changes):
    base = {**BASE, "architectures": [arch], "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}
    documented_or_result(lambda: model_config({**base, **changes}))


# ---- GGUF ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> bytes:
    """A small valid llama GGUF file (2 layers, hidden 64, F32 tensors), written with the gguf package."""
    import gguf

    path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    w = gguf.GGUFWriter(path, "llama")
    H, inter, heads, vocab = 64, 128, 4, 32
    w.add_block_count(2)
    w.add_embedding_length(H)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_context_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    tokens = [chr(ord("a") + i) for i in range(26)] + ["ab", "ba", "aa", "bb", "<s>", "</s>"]
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["a b", "b a", "a a", "b b"])
    w.add_bos_token_id(30)
    w.add_eos_token_id(31)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, H), "output_norm.weight": (H,)}
    for i in range(2):
        shapes.update({f"blk.{i}.attn_norm.weight": (H,), f"blk.{i}.attn_q.weight": (H, H),
                       f"blk.{i}.attn_k.weight": (H, H), f"blk.{i}.attn_v.weight": (H, H),
                       f"blk.{i}.attn_output.weight": (H, H), f"blk.{i}.ffn_norm.weight": (H,),
                       f"blk.{i}.ffn_gate.weight": (inter, H), f"blk.{i}.ffn_up.weight": (inter, H),
                       f"blk.{i}.ffn_down.weight": (H, inter)})
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        return f.read()


def test_tiny_gguf_converts_and_runs(tiny_gguf, tmp_path):
    from kvinfer.gguf_convert import convert_gguf

    src = tmp_path / "t.gguf"
    src.write_bytes(tiny_gguf)
    convert_gguf(str(src), str(tmp_path / "out"))
    tracker = kvinfer.VramTracker()
    llm = kvinfer.LLM(str(tmp_path / "out"), device="cpu", max_context=32, max_batch=1, tracker=tracker)
    out = llm.generate([1, 2, 3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4
    llm.close()
    assert tracker.total_bytes == 0


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 10**6))
def test_gguf_reading(tiny_gguf, tmp_path_factory, edits, cut):
    from kvinfer.gguf_convert import convert_gguf

    data = bytearray(tiny_gguf)
    for at, byte in edits:  # corrupt the metadata region mostly (where the parser makes choices)
        data[at % min(len(data), 4096)] = byte
    if cut is not None:
        data = data[: cut % len(data)]
    folder = tmp_path_factory.mktemp("g")
    src = folder / "x.gguf"
    src.write_bytes(bytes(data))
    documented_or_result(lambda: convert_gguf(str(src), str(folder / "out")))


# ---- SamplingParams and KVCache -----------------------------------------------------------------
anything = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4) | \
    st.lists(st.integers(-5, 5) | st.text(max_size=3), max_size=3)


@FUZZ
@given(kw=st.dictionaries(st.sampled_from(["max_tokens", "temperature", "top_k", "top_p", "min_p",
                                           "repetition_penalty", "seed", "stop", "stop_token_ids", "ignore_eos"]),
                          anything, max_size=4))
def test_sampling_params(kw):
    p = documented_or_result(lambda: SamplingParams(**kw))
    if p is not None:  # what it accepts the engine can represent
        assert 1 <= p.max_tokens < 2**31 and 0 <= p.top_k < 2**31 and p.temperature >= 0
        assert p.seed is None or 0 <= p.seed < 2**64


sizes = st.integers(-3, 40) | st.integers(2**31 - 2, 2**33) | st.just(0)


@FUZZ
@given(fields=st.tuples(sizes, sizes, sizes, sizes, sizes), layer=st.integers(-2, 5), slot=st.integers(-2, 5),
       shape=st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 9)),
       dtype=st.sampled_from(["float16", "float32", "float64", "int32", ">f2"]))
def test_kv_cache_arguments(fields, layer, slot, shape, dtype):
    tracker = kvinfer.VramTracker(budget_bytes=64 << 20)

    def run():
        cache = kvinfer.KVCache(kvinfer.KVCacheConfig(*fields), tracker=tracker)
        k = np.ones(shape, dtype)
        cache.append(layer, slot, k, k)
        cache.commit(slot, shape[0])
        assert cache.keys(layer, slot).shape == (shape[0],) + shape[1:]

    documented_or_result(run)
    assert tracker.total_bytes == 0
