"""The CPU engine against HF transformers on tiny random models of every architecture:
hidden states, logits and greedy continuations; plus the cache invariants."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from step_helpers import decode_rows  # noqa: E402
from tiny_models import ARCHS, CPU_ONLY, VOCAB, hf_model, make_model  # noqa: E402

# Tolerances, relative to the largest reference magnitude. Our K/V cache is fp16 (HF keeps fp32),
# which perturbs each attention input by up to 2^-11 relative; summation order differs from torch.
# Measured worst cases on these models (2026-11-24): hidden states 7.4e-4, logits 1.5e-3
# (llama_mha_d128); a wrong rope theta is more than 20x above the bound (test_planted_bug_is_caught).
HIDDEN_TOL = 5e-3
LOGITS_TOL = 5e-3


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)  # shape before values
    assert np.isfinite(ours).all(), "NaN/Inf in kvinfer output"
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {name: make_model(name, str(root / name)) for name in {**ARCHS, **CPU_ONLY}}


@pytest.fixture(scope="session")
def hf_models(model_dirs):
    return {name: hf_model(folder) for name, folder in model_dirs.items()}


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def load(folder: str, **kw) -> LLM:
    kw.setdefault("max_context", 256)
    kw.setdefault("max_batch", 4)
    kw.setdefault("max_step_tokens", 48)  # prompts of 100 tokens span several steps
    return LLM(folder, device="cpu", tracker=kvinfer.VramTracker(), **kw)


@pytest.mark.parametrize("name", [*ARCHS, *CPU_ONLY])
def test_hidden_states_and_logits_match_hf(name, model_dirs, hf_models):
    llm = load(model_dirs[name])
    ids = prompt(100, 1)
    logits, states = llm.logits(ids, hidden_states=True)
    with torch.no_grad():
        ref = hf_models[name](torch.tensor([ids]), output_hidden_states=True)
    layers = llm.config.num_layers
    assert len(ref.hidden_states) == layers + 1
    # HF's last hidden state is after the final norm; ours are the residual stream: compare 0..L-1.
    for i in range(layers):
        err = rel_err(states[i], ref.hidden_states[i][0].numpy())
        assert err < HIDDEN_TOL, f"{name}: hidden state {i}: relative error {err:.2e}"
    err = rel_err(logits, ref.logits[0].numpy())
    assert err < LOGITS_TOL, f"{name}: logits relative error {err:.2e}"


@pytest.mark.parametrize("name", [*ARCHS, *CPU_ONLY])
def test_greedy_continuation_matches_hf(name, model_dirs, hf_models):
    llm = load(model_dirs[name])
    for seed in (2, 3):
        ids = prompt(20 + 17 * seed, seed)
        ours = llm.generate(ids, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0]
        with torch.no_grad():
            # An eos id that never occurs: HF neither stops nor suppresses eos (min_new_tokens would
            # mask it, which ignore_eos does not).
            ref = hf_models[name].generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                                           eos_token_id=VOCAB + 1, pad_token_id=0)
        assert ours.token_ids == ref[0, len(ids):].tolist(), name
        assert ours.finish_reason == "length"


@pytest.mark.parametrize("name", ["llama_gqa3", "gemma2"])
def test_decode_steps_equal_prefill_rows_bit_for_bit(name, model_dirs):
    """The seed lesson: each decode step must reproduce the matching row of one causal prefill."""
    llm = load(model_dirs[name])
    ids = prompt(60, 4)
    full = llm.logits(ids)
    steps = decode_rows(llm, ids, 23)
    assert steps.shape == full[22:].shape
    np.testing.assert_array_equal(steps, full[22:])


def test_cached_generation_equals_uncached_recomputation(model_dirs):
    llm = load(model_dirs["qwen2"])
    ids = prompt(30, 5)
    out = llm.generate(ids, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
    seq = list(ids)
    for token in out.token_ids:
        assert int(np.argmax(llm.logits(seq)[-1])) == token
        seq.append(token)


@pytest.mark.parametrize("name", ["llama_gqa3", "gpt2", "gemma2"])
def test_batch_of_four_equals_four_singles(name, model_dirs):
    llm = load(model_dirs[name])
    prompts = [prompt(n, 10 + n) for n in (5, 31, 64, 100)]
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    batched = llm.generate(prompts, params)
    assert len(batched) == 4
    for p, b in zip(prompts, batched):
        single = llm.generate(p, params)[0]
        assert b.token_ids == single.token_ids
        assert b.prompt_token_ids == p


def test_sampling_is_deterministic_per_seed(model_dirs):
    llm = load(model_dirs["llama_gqa3"])
    params = SamplingParams(max_tokens=24, temperature=0.9, top_k=50, top_p=0.95, min_p=0.01,
                            repetition_penalty=1.1, seed=1234, ignore_eos=True)
    a = llm.generate(prompt(12, 6), params)[0].token_ids
    b = llm.generate(prompt(12, 6), params)[0].token_ids
    c = llm.generate([prompt(12, 6), prompt(7, 7)], params)[0].token_ids
    assert a == b == c
    other = llm.generate(prompt(12, 6), SamplingParams(**{**params.__dict__, "seed": 99}))[0].token_ids
    assert other != a


def test_planted_bug_is_caught(model_dirs, hf_models, tmp_path):
    """The comparison must fail when the engine computes something else: a wrong rope theta."""
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dirs["llama_gqa3"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    params = cfg.get("rope_parameters") or {}
    params["rope_theta"] = cfg["rope_theta"] = 1000.0  # either key style
    cfg["rope_parameters"] = params
    (bad / "config.json").write_text(json.dumps(cfg))
    ids = prompt(100, 1)
    ours = load(str(bad)).logits(ids)
    with torch.no_grad():
        ref = hf_models["llama_gqa3"](torch.tensor([ids])).logits[0].numpy()
    assert rel_err(ours, ref) > 20 * LOGITS_TOL


def test_auto_device_takes_the_cpu_for_a_family_cuda_refuses(model_dirs, monkeypatch):
    from kvinfer import _core, llm as llm_module

    monkeypatch.setattr(llm_module.kvinfer, "cuda_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(llm_module._core, "cuda_forward_available", lambda: True)
    monkeypatch.setattr(llm_module._core, "cuda_unsupported", lambda c: "" if c.architecture != "Gemma2ForCausalLM"
                        else "Gemma2ForCausalLM ... is not yet implemented on CUDA")
    gemma = llm_module.LLM(model_dirs["gemma2"], device="auto", max_context=64, max_batch=1, max_step_tokens=16)
    assert gemma.device == "cpu"
    gemma.close()
    assert llm_module._pick_device("auto", _core.ModelConfig()) == "cuda:0"  # (what the others would get)


def _gemma2_planted(cfg, c, bug: str) -> None:
    from kvinfer import families

    families._describe_gemma2(cfg, c)
    if bug == "scores not soft-capped":
        c.attn_softcap = 0.0
    elif bug == "logits not soft-capped":
        c.logit_softcap = 0.0
    elif bug == "query scale 1/sqrt(head_dim)":
        c.attn_scale = 0.0
    elif bug == "embedding not scaled":
        c.embed_scale = 1.0


@pytest.mark.parametrize("bug", ["scores not soft-capped", "logits not soft-capped", "query scale 1/sqrt(head_dim)",
                                 "embedding not scaled", "norm weights not offset by 1"])
def test_gemma2_planted_bugs_are_caught(bug, model_dirs, hf_models, monkeypatch):
    """Each of Gemma 2's differences from Llama, left out, moves the logits far beyond the bound."""
    import dataclasses

    from kvinfer import families

    def weights(c, names):
        out = families._gemma_weights(c, names)
        return [dataclasses.replace(s, plus=0.0) for s in out] if bug == "norm weights not offset by 1" else out

    patched = tuple(dataclasses.replace(f, describe=lambda cfg, c: _gemma2_planted(cfg, c, bug), weights=weights)
                    if "Gemma2ForCausalLM" in f.architectures else f for f in families.FAMILIES)
    monkeypatch.setattr(families, "FAMILIES", patched)
    ids = prompt(100, 1)
    ours = load(model_dirs["gemma2"]).logits(ids)
    with torch.no_grad():
        ref = hf_models["gemma2"](torch.tensor([ids])).logits[0].numpy()
    assert rel_err(ours, ref) > 10 * LOGITS_TOL, bug
