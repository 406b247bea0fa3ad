"""Log-probabilities of generated tokens and OpenAI's presence/frequency penalties, on every device:
logprobs equal the log-softmax of the model's logits at that position (LLM.logits of the prompt and
the tokens so far) and never change which tokens are drawn; penalised greedy decoding equals a
numpy loop that subtracts the penalties from the logits itself."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import MAX_LOGPROBS, SamplingParams  # noqa: E402
from conftest import DEVICES  # noqa: E402
from tiny_models import VOCAB, make_model  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("logprobs") / "m"))


@pytest.fixture(scope="module", params=DEVICES)
def llm(folder, request):
    return LLM(folder, device=request.param, max_context=128, max_batch=4, max_step_tokens=32,
               tracker=kvinfer.VramTracker())


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_logprobs_are_the_models_log_softmax(llm):
    ids = prompt(11, 1)
    out = llm.generate(ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=5))[0]
    assert len(out.logprobs) == len(out.token_ids) == 12
    rows = llm.logits(ids + out.token_ids)[len(ids) - 1:-1]  # the row that produced each token
    assert rows.shape == (12, llm.config.vocab_size)
    for lp, token, row in zip(out.logprobs, out.token_ids, rows):
        want = log_softmax(row)
        assert lp.token_id == token and lp.logprob <= 0
        assert lp.logprob == pytest.approx(want[token], abs=1e-2)  # fp16 activations: decode vs prefill rows
        assert [i for i, _ in lp.top] == np.argsort(-want, kind="stable")[:5].tolist()
        assert lp.top[0][0] == token  # greedy: the sampled token is the most likely one
        np.testing.assert_allclose([v for _, v in lp.top], want[[i for i, _ in lp.top]], atol=1e-2)


def test_logprobs_never_change_the_samples(llm):
    base = SamplingParams(max_tokens=20, temperature=0.9, top_k=30, seed=5, ignore_eos=True)
    prompts = [prompt(n, 20 + n) for n in (4, 19, 33)]
    plain = llm.generate(prompts, base)
    asked = llm.generate(prompts, SamplingParams(**{**base.__dict__, "logprobs": 0}))
    assert [o.token_ids for o in asked] == [o.token_ids for o in plain]
    assert all(o.logprobs is None for o in plain)
    assert all(len(o.logprobs) == 20 and all(lp.top == [] for lp in o.logprobs) for o in asked)


def penalised_greedy(llm: LLM, ids: list[int], n: int, presence: float, frequency: float) -> list[int]:
    """Greedy decoding by hand: the last row's logits minus frequency x count and presence once per
    generated id, then argmax."""
    out: list[int] = []
    for _ in range(n):
        x = llm.logits(ids + out)[-1].astype(np.float64) if out else llm.logits(ids)[-1].astype(np.float64)
        counts = np.bincount(np.asarray(out, np.int64), minlength=len(x)) if out else np.zeros(len(x))
        x = x - frequency * counts - presence * (counts > 0)
        out.append(int(np.argmax(x)))
    return out


@pytest.mark.parametrize("presence, frequency", [(0.0, 2.0), (1.5, 0.0), (0.7, 1.1), (-0.5, 0.0)])
def test_presence_and_frequency_penalties_match_numpy(llm, presence, frequency):
    ids = prompt(6, 7)
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True, presence_penalty=presence,
                            frequency_penalty=frequency)
    got = llm.generate(ids, params)[0].token_ids
    assert got == penalised_greedy(llm, ids, 32, presence, frequency)
    # the test can fail: the penalties change this output (a positive one makes it repeat less)
    plain = llm.generate(ids, SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))[0].token_ids
    assert got != plain
    if presence >= 0 and frequency >= 0:
        assert len(set(got)) >= len(set(plain))


def test_penalties_count_only_generated_tokens(llm):
    """A prompt full of one token: presence/frequency must not push that token down at the first step."""
    ids = prompt(5, 9)
    first = llm.generate(ids, SamplingParams(max_tokens=1, temperature=0))[0].token_ids[0]
    rep = ids + [first] * 8  # the greedy token of this prompt, repeated, is in the prompt only
    a = llm.generate(rep, SamplingParams(max_tokens=1, temperature=0))[0].token_ids
    b = llm.generate(rep, SamplingParams(max_tokens=1, temperature=0, frequency_penalty=2.0, presence_penalty=2.0))
    assert b[0].token_ids == a


def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"presence_penalty=3 must be a number in \[-2, 2\]"):
        SamplingParams(presence_penalty=3)
    with pytest.raises(ValueError, match="frequency_penalty"):
        SamplingParams(frequency_penalty=float("nan"))
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=MAX_LOGPROBS + 1)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=True)
