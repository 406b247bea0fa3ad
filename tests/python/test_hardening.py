"""Misuse that once crashed the process or gave silently wrong results (the hardening issue's
list): each case now raises one of kvinfer's documented exceptions, names what is wrong, and
leaves the process and the tracker as they were."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from tiny_models import make_model  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("hard") / "m"))


@pytest.fixture
def broken(good, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(good, dst)
    return dst


def rewrite_config(folder, **change):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(change)
    if "rope_theta" in change and isinstance(cfg.get("rope_parameters"), dict):  # transformers-5 configs
        cfg["rope_parameters"]["rope_theta"] = change["rope_theta"]
    path.write_text(json.dumps(cfg))


def loads_fail(folder, match, exc=ValueError, **kw):
    tracker = kvinfer.VramTracker()
    with pytest.raises(exc, match=match):
        LLM(str(folder), device="cpu", max_context=64, max_batch=2, tracker=tracker, **kw)
    assert tracker.total_bytes == 0, tracker.report()


# 1. a KV cache whose size overflows 64 bits is refused (it used to allocate 0 bytes, then write)
def test_kv_cache_size_overflow_is_refused():
    cfg = kvinfer.KVCacheConfig(num_layers=2**30, max_context=2**30, num_kv_heads=16, head_dim=1)
    with pytest.raises(ValueError, match="overflows 64-bit sizes"):
        kvinfer.KVCache.size_bytes(cfg)
    with pytest.raises(ValueError, match="overflows 64-bit sizes"):
        kvinfer.KVCache(cfg)
    with pytest.raises(ValueError, match=r"KVCacheConfig.num_layers=1099511627776 must be in \[1, 2\^31 - 1\]"):
        kvinfer.KVCacheConfig(num_layers=2**40, max_context=8, num_kv_heads=1, head_dim=8)


# 2, 11. every entry point of a closed model says so
def test_a_closed_model_says_so(good):
    llm = LLM(good, device="cpu", max_context=64, max_batch=2, tracker=kvinfer.VramTracker())
    llm.close()
    for call in (lambda: llm.generate([1, 2, 3]), lambda: list(llm.stream([1, 2, 3])),
                 lambda: llm.logits([1, 2, 3]), lambda: llm.chat([{"role": "user", "content": "hi"}])):
        with pytest.raises(ValueError, match="this LLM was closed"):
            call()
    with pytest.raises(ValueError, match="closed"):
        llm.runner.step(np.array([1], np.int32), np.array([0, 1], np.int32), np.array([0], np.int32),
                        np.array([0], np.int32), np.array([0], np.int32))
    llm.close()  # twice is fine


def test_a_model_used_as_a_context_manager_is_closed_on_exit(good):
    tracker = kvinfer.VramTracker()
    with LLM(good, device="cpu", max_context=64, max_batch=1, tracker=tracker) as llm:
        assert len(llm.generate([1, 2, 3], kvinfer.SamplingParams(max_tokens=2, ignore_eos=True))[0].token_ids) == 2
        assert tracker.total_bytes > 0
    assert tracker.total_bytes == 0
    with pytest.raises(ValueError, match="this LLM was closed"):
        llm.generate([1, 2, 3])


# 6. non-finite weights and out-of-domain config values are refused at load, named
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_named(broken, bad):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(broken, "model.safetensors")
    tensors = load_file(path)
    w = tensors["model.layers.1.mlp.down_proj.weight"].copy()
    w[3, 5] = bad
    tensors["model.layers.1.mlp.down_proj.weight"] = w
    save_file(tensors, path)
    loads_fail(broken, r"tensor 'model.layers.1.mlp.down_proj.weight' in .* holds .* at index \(3, 5\) \(not finite\)")


def test_fp32_beyond_fp16_is_named(broken):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(broken, "model.safetensors")
    tensors = load_file(path)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.float32)
    tensors["model.norm.weight"][7] = 1e6
    save_file(tensors, path)
    loads_fail(broken, r"'model.norm.weight' .* holds 1000000.0 at index \(7,\) \(beyond the float16 range\)")


@pytest.mark.parametrize("change, match", [
    ({"rope_theta": 0.0}, "rope_theta=0.0 must be a finite number > 0"),
    ({"rope_theta": -5.0}, "rope_theta=-5.0 must be a finite number > 0"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.0}}, "factor=0.0 must be a finite number > 0"),
    ({"rope_scaling": {"rope_type": "linear"}}, "config.json lacks 'factor'"),
    ({"hidden_size": 192.7}, r"hidden_size=192.7 must be an integer"),
    ({"num_hidden_layers": True}, r"num_hidden_layers=True must be an integer"),
    ({"intermediate_size": 2**31 - 1}, "exceeds 2\\^31 - 1"),  # 2 * intermediate_size
    ({"vocab_size": 3_000_000_000}, r"vocab_size=3000000000 must be an integer in \[1, 2147483647\]"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps='tiny' must be a finite number"),
    ({"architectures": "LlamaForCausalLM"}, "architectures='LlamaForCausalLM' must be a list"),
])
def test_config_values_outside_their_domain(broken, change, match):
    rewrite_config(broken, **change)
    loads_fail(broken, match)


# 7. sizes are 64-bit in the planner: no silent wrap, no wrong totals
def test_planner_refuses_sizes_it_cannot_represent():
    from kvinfer import planner

    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 2**31 - 1,
           "num_hidden_layers": 2, "num_attention_heads": 32, "vocab_size": 1000, "max_position_embeddings": 128}
    with pytest.raises(ValueError, match="exceeds 2\\^31 - 1"):
        planner.plan_for_config("big", cfg, 128, 1)
    cfg["intermediate_size"] = 2**30 - 16  # representable: the weights' bytes are 64-bit, no wrap
    plan = planner.plan_for_config("big", cfg, 128, 1)
    assert plan.weights_bytes > 2 * 3 * 4096 * (2**30 - 16) * 2  # 2 layers x 3 matrices, fp16


# 8. values that used to reach pybind's converters raise ValueError naming the field
@pytest.mark.parametrize("kw, match", [
    ({"seed": -1}, r"seed=-1 must be an integer in \[0, 2\^64\)"),
    ({"seed": 2**64}, r"seed=18446744073709551616 must be"),
    ({"top_k": 2**31}, "top_k=2147483648 must be an integer"),
    ({"max_tokens": True}, "max_tokens=True must be an integer"),
    ({"temperature": float("nan")}, "temperature=nan must be a finite number"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty=inf must be a finite number"),
    ({"stop_token_ids": [1.5]}, "stop_token_ids"),
    ({"ignore_eos": "yes"}, "ignore_eos='yes' must be True or False"),
])
def test_sampling_params_reject_unrepresentable_values(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)


def test_sampling_params_keep_numpy_integers():
    assert SamplingParams(seed=np.int64(7), max_tokens=np.int32(3)).seed == 7


@pytest.mark.parametrize("kw, match", [
    ({"max_memory": 10**30}, "must be > 0 and below 2\\^63 bytes"),
    ({"max_batch": 2**40}, r"max_batch=1099511627776 must be an integer in \[1, 2\^31 - 1\]"),
    ({"max_batch": 0}, r"max_batch=0 must be an integer"),  # 10: it used to mean 8
    ({"max_context": 1.5}, r"max_context=1.5 must be an integer"),  # 10: it used to mean 1
    ({"max_step_tokens": 0}, r"max_step_tokens=0 must be an integer"),
    ({"max_step_tokens": -1}, r"max_step_tokens=-1 must be an integer"),
])
def test_llm_size_arguments(good, kw, match):
    kw = {"max_context": 64, **kw}
    tracker = kvinfer.VramTracker()
    with pytest.raises(ValueError, match=match):
        LLM(good, device="cpu", tracker=tracker, **kw)
    assert tracker.total_bytes == 0


def test_tracker_budget_range():
    with pytest.raises(ValueError, match=r"budget_bytes=18446744073709551616 must be in \[0, 2\^63 - 1\]"):
        kvinfer.VramTracker(budget_bytes=2**64)
    with pytest.raises(ValueError, match=r"budget_bytes=-1 must be in"):
        kvinfer.VramTracker(budget_bytes=-1)
    assert kvinfer.VramTracker(budget_bytes=2**62).budget_bytes == 2**62


# 9. undocumented exception types no longer escape from malformed files
def test_malformed_side_files_are_named(broken):
    (broken / "tokenizer_config.json").write_text("{oops")
    loads_fail(broken, r"tokenizer_config.json is not valid JSON")


def test_generation_config_eos_must_be_ids(broken):
    (broken / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    loads_fail(broken, r"generation_config.json: eos_token_id='x' must be a token id")


def test_chat_template_of_the_wrong_type(broken):
    cfg = json.loads((broken / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ["{{ messages }}"]
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    loads_fail(broken, "chat_template must be a string or a list of")


def test_chat_template_errors_are_value_errors(broken):
    cfg = json.loads((broken / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}"
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    llm = LLM(str(broken), device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker())
    with pytest.raises(ValueError, match=r"the chat template of .*tokenizer_config.json does not compile"):
        llm.chat([{"role": "user", "content": "hi"}])


def _sharded(folder, weight_map):
    os.rename(folder / "model.safetensors", folder / "shard.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_index_weight_map_must_map_names(broken):
    _sharded(broken, ["shard.safetensors"])
    loads_fail(broken, "weight_map must map tensor names to shard file names")


def test_index_shard_outside_the_folder(broken):
    _sharded(broken, {"model.norm.weight": "../other/model.safetensors"})
    loads_fail(broken, r"shard '../other/model.safetensors' is outside the model folder")


def test_malformed_index_is_named(broken):
    _sharded(broken, {})
    (broken / "model.safetensors.index.json").write_text("[1,")
    loads_fail(broken, r"model.safetensors.index.json is not valid JSON")


# 10. silent coercions of data
def test_token_ids_must_be_integers(good):
    llm = LLM(good, device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker())
    for prompt in ([1.9, 2.2], [True, 2], ["a", "b"]):
        with pytest.raises(ValueError, match="must hold integers"):
            llm.generate([prompt])
    with pytest.raises(TypeError):  # the runner itself takes int32 arrays only
        llm.runner.step(np.array([1.9]), np.array([0, 1], np.int32), np.array([0], np.int32),
                        np.array([0], np.int32), np.array([0], np.int32))
    for prompt in (np.array([1.5, 2.0]), np.array([True, False]), np.array([[1, 2]]), [np.float64(3.0), 2],
                   iter([True, 2])):
        with pytest.raises(ValueError, match="must hold integers"):
            llm.generate([prompt])


def test_token_ids_of_every_integer_kind_give_the_same_tokens(good):
    """A list of ints, of numpy integers, and numpy arrays of int32/int64/uint16 are the same
    prompt; ids 0 and 1 (which bools equal) and ids past the vocabulary are told apart."""
    from kvinfer.prompt_ids import encode_prompt
    llm = LLM(good, device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker())
    ids = [0, 5, 1, 9, 3]
    want = llm.generate([ids], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0].token_ids
    assert encode_prompt(ids, llm.tokenizer, llm.config.vocab_size) is not ids  # a copy: the caller may reuse it
    for prompt in ([np.int64(t) for t in ids], np.array(ids, np.int32), np.array(ids, np.int64),
                   np.array(ids, np.uint16), tuple(ids), [ids[0], np.int64(ids[1]), *ids[2:]]):
        assert encode_prompt(prompt, llm.tokenizer, llm.config.vocab_size) == ids
        assert all(type(t) is int for t in encode_prompt(prompt, llm.tokenizer, llm.config.vocab_size))
        got = llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0].token_ids
        assert got == want
    assert encode_prompt((t for t in ids), llm.tokenizer, llm.config.vocab_size) == ids  # an iterator, once
    for bad in ([2, llm.config.vocab_size], np.array([2, -1]), [2, 2**70]):
        with pytest.raises(ValueError, match="out of range"):
            llm.generate([bad])


def test_kv_cache_append_refuses_what_it_would_store_wrongly():
    cache = kvinfer.KVCache(kvinfer.KVCacheConfig(1, 8, 1, 4))
    k = np.ones((1, 1, 4), np.float16)
    with pytest.raises(ValueError, match="byte order"):
        cache.append(0, 0, k.astype(">f2"), k)
    with pytest.raises(ValueError, match="beyond the float16 range"):
        cache.append(0, 0, np.full((1, 1, 4), 1e6, np.float32), k)
    assert cache.pending(0) == 0  # nothing was appended
    cache.append(0, 0, k, k)
    cache.commit(0, 1)
    np.testing.assert_array_equal(cache.keys(0, 0), k)


# 12. the command line: one line and status 2, before any slow work
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kvinfer", *args], capture_output=True, text=True, timeout=300)


def test_convert_gguf_into_a_non_empty_folder_fails_first(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("convert-gguf", str(gguf), str(out))
    assert r.returncode == 2 and "is not empty" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "file").write_text("x")
    r = run_cli("convert-gguf", str(gguf), str(tmp_path / "file"))
    assert r.returncode == 2 and "exists and is not a folder" in r.stderr and "Traceback" not in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args", [("vram", "--model", "llama-3-8b", "--max-step-tokens", "0"),
                                  ("bench", "--batch", "0"), ("generate", "hi", "--max-tokens", "0")])
def test_cli_rejects_zero_sizes(args):
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


# 9. a GGUF file without the llama hyperparameters
def test_gguf_without_hyperparameters(tmp_path):
    import gguf

    from kvinfer.gguf_convert import convert_gguf

    path = str(tmp_path / "bare.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="malformed GGUF content"):
        convert_gguf(path, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    r = run_cli("convert-gguf", path, str(tmp_path / "out2"))
    assert r.returncode == 2 and "malformed GGUF content" in r.stderr and "Traceback" not in r.stderr
