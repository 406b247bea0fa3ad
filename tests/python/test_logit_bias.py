"""logit_bias and min_tokens through the sampler (CPU reference and CUDA kernel): a bias moves the
argmax, -inf bans an id, zero biases change nothing, min_tokens bans the end of sequence until that
many tokens are out; LLM.generate and the serving engine agree; bad entries are refused before a
step runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import DEVICES
from kvinfer.step_inputs import LOGIT_BIAS_DTYPE, SAMPLING_DTYPE
from kvinfer.llm import LLM
from kvinfer.sampling import SamplingParams
from kvinfer.serving import ServingEngine
from tiny_models import VOCAB, make_model

EOS = 0  # tiny_models' end of sequence


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("bias") / "m"))


@pytest.fixture(scope="module", params=DEVICES)
def llm(folder, request):
    return LLM(folder, device=request.param, max_context=128, max_batch=4, max_step_tokens=32)


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def ids(llm, p, **kw) -> list[int]:
    return llm.generate([p], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, **kw))[0].token_ids


def test_a_bias_moves_the_argmax_and_minus_inf_bans(llm):
    p = prompt(20, 1)
    plain = ids(llm, p)
    assert ids(llm, p, logit_bias={77: 100.0}) == [77] * 12
    banned = ids(llm, p, logit_bias={plain[0]: -math.inf})
    assert banned[0] != plain[0] and plain[0] not in banned
    assert ids(llm, p, logit_bias={plain[0]: 0.0, 5: 0.0}) == plain  # zero biases: the same argmax


def test_zero_biases_leave_seeded_sampling_as_it_was(llm):
    p = prompt(20, 2)
    seeded = dict(max_tokens=16, temperature=0.8, top_k=50, seed=11, ignore_eos=True)
    want = llm.generate([p], SamplingParams(**seeded))[0].token_ids
    got = llm.generate([p], SamplingParams(**seeded, logit_bias={3: 0.0, 9: 0.0}))[0].token_ids
    assert got == want


def test_min_tokens_bans_the_end_of_sequence_until_then(llm):
    eager = dict(max_tokens=20, temperature=0, logit_bias={EOS: 100.0})  # eos wins whenever it may
    assert llm.generate([prompt(10, 3)], SamplingParams(**eager))[0].token_ids == [EOS]
    out = llm.generate([prompt(10, 3)], SamplingParams(**eager, min_tokens=5))[0]
    assert len(out.token_ids) == 6 and EOS not in out.token_ids[:5] and out.token_ids[5] == EOS
    assert out.finish_reason == "stop"


def test_the_serving_engine_applies_them_as_generate_does(llm):
    params = [SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logit_bias={42: 6.0}),
              SamplingParams(max_tokens=10, temperature=0, logit_bias={EOS: 100.0}, min_tokens=4),
              SamplingParams(max_tokens=10, temperature=0.7, seed=3, ignore_eos=True, logit_bias={42: 2.0})]
    prompts = [prompt(15 + i, 20 + i) for i in range(3)]
    # Both sides start from the prefix cache: a prompt whose first block is cached runs a shorter
    # prefill, which the GPU kernels may round differently (a seeded sample then can differ).
    for p, q in zip(prompts, params):
        llm.generate([p], q)
    want = [llm.generate([p], q)[0].token_ids for p, q in zip(prompts, params)]
    engine = ServingEngine(llm)
    try:
        got = [[t for d in engine.generate(p, q) for t in d.token_ids] for p, q in zip(prompts, params)]
    finally:
        engine.close()
    assert got == want and len(want[1]) == 5


def test_bad_biases_are_refused(llm):
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1.0})
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={1: math.nan})
    with pytest.raises(ValueError, match=r"min_tokens=5 must be an integer in \[0, max_tokens\]"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ValueError, match=f"token id {VOCAB + 1}, beyond the vocabulary of {VOCAB}"):
        llm.generate([prompt(5, 4)], SamplingParams(logit_bias={VOCAB + 1: 1.0}))
    r = llm.runner
    args = np.zeros(1, SAMPLING_DTYPE)
    args["top_p"] = args["repetition_penalty"] = 1.0
    args["bias_count"] = 2
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    step = lambda biases: r.step(i32(1), i32(0, 1), i32(0), i32(0), i32(0), args, logit_bias=biases)  # noqa: E731
    with pytest.raises(ValueError, match="token 7 has two logit biases"):
        step(np.array([(7, 1.0), (7, 2.0)], LOGIT_BIAS_DTYPE))
    with pytest.raises(ValueError, match=r"logit biases \[0, 2\) are not within the step's 1"):
        step(np.array([(7, 1.0)], LOGIT_BIAS_DTYPE))
    with pytest.raises(ValueError, match="must be finite or -inf"):
        step(np.array([(7, 1.0), (8, math.inf)], LOGIT_BIAS_DTYPE))
    assert step(np.array([(7, 100.0), (8, -math.inf)], LOGIT_BIAS_DTYPE)).tolist() == [7]
