"""The serving engine in a process of its own (kvinfer.engine_process, what `kvinfer serve` runs):
requests from several threads give what the same requests give an in-process LLM; the engine's
errors raise at submit; abort and close end requests; stats cross the pipe; a failed load raises
the engine process's error; an engine process that dies ends every open request with an error
instead of leaving it waiting."""

from __future__ import annotations

import os
import queue
import signal
import threading

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.engine_process import EngineProcess  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from kvinfer.serving import EngineStoppedError  # noqa: E402
from tiny_models import VOCAB, make_model  # noqa: E402

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
LLM_ARGS = dict(device="cpu", max_context=128, max_batch=4, max_step_tokens=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("engine_process") / "m"))


@pytest.fixture(scope="module")
def engine(folder):
    e = EngineProcess(dict(model=folder, **LLM_ARGS), dict(max_waiting=8))
    yield e
    e.close()


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def tokens_of(engine, prompt_ids, params) -> tuple[list[int], str]:
    q: queue.SimpleQueue = queue.SimpleQueue()
    engine.submit(prompt_ids, params, q.put)
    out = []
    while True:
        d = q.get(timeout=60)
        out += d.token_ids
        if d.finish_reason:
            return out, d.finish_reason


def test_requests_from_threads_equal_the_in_process_engine(folder, engine):
    prompts = [prompt(5 + 7 * i, i) for i in range(6)]
    with LLM(folder, **LLM_ARGS) as llm:
        expected = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    got: list = [None] * len(prompts)

    def one(i: int) -> None:
        got[i] = tokens_of(engine, prompts[i], GREEDY)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [g[1] for g in got] == ["length"] * len(prompts)
    assert [g[0] for g in got] == expected
    assert engine.info.max_batch == 4 and engine.llm.max_context == 128
    assert engine.llm._encode(prompts[0]) == prompts[0]
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["slots_used"] == 0 and stats["steps"] > 0


def test_errors_raise_at_submit(engine):
    with pytest.raises(kvinfer.ContextOverflowError, match="exceeds max_context=128"):
        engine.submit(prompt(8, 1), SamplingParams(max_tokens=500), lambda d: None)
    with pytest.raises(ValueError, match="stop_token_ids"):
        engine.submit(prompt(8, 1), SamplingParams(max_tokens=4, stop_token_ids=[VOCAB + 5]), lambda d: None)
    assert tokens_of(engine, prompt(4, 2), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[1] == "length"


def test_abort_ends_a_request_and_frees_its_slot(engine):
    q: queue.SimpleQueue = queue.SimpleQueue()
    rid = engine.submit(prompt(6, 3), SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), q.put)
    first = q.get(timeout=60)
    assert first.finish_reason is None and first.token_ids
    engine.abort(rid)
    while (d := q.get(timeout=60)).finish_reason is None:
        pass
    assert d.finish_reason == "abort"
    assert engine.stats()["slots_used"] == 0


class Unpicklable(Exception):
    def __init__(self, what, why):  # two arguments: pickle rebuilds it from one (its message) and fails
        super().__init__(f"{what}: {why}")


class OddParams(SamplingParams):
    def check_vocab(self, vocab_size: int) -> None:  # raised in the engine process at submit
        raise Unpicklable("odd", "params")


def test_an_error_that_does_not_unpickle_still_reaches_the_caller(engine):
    with pytest.raises(RuntimeError, match="Unpicklable: odd: params"):
        engine.submit(prompt(4, 6), OddParams(max_tokens=4), lambda d: None)
    assert tokens_of(engine, prompt(4, 7), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[1] == "length"


def test_a_failed_load_raises_the_engine_process_error(tmp_path):
    with pytest.raises(ValueError, match="max_context=100000"):
        EngineProcess(dict(model=make_model("llama_gqa3", str(tmp_path / "m")), device="cpu", max_context=100000),
                      {})


def test_close_and_a_dead_engine_process_end_open_requests(folder):
    e = EngineProcess(dict(model=folder, **LLM_ARGS), {})
    q: queue.SimpleQueue = queue.SimpleQueue()
    e.submit(prompt(6, 4), SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), q.put)
    assert q.get(timeout=60).finish_reason is None
    e.close()
    while (d := q.get(timeout=60)).finish_reason is None:
        pass
    assert d.finish_reason == "abort" and e.closed
    with pytest.raises(ValueError, match="closed"):
        e.submit(prompt(4, 5), GREEDY, q.put)

    e = EngineProcess(dict(model=folder, **LLM_ARGS), {})
    e.submit(prompt(6, 4), SamplingParams(max_tokens=120, temperature=0, ignore_eos=True), q.put)
    assert q.get(timeout=60).finish_reason is None
    os.kill(e._process.pid, signal.SIGKILL)
    while (d := q.get(timeout=60)).finish_reason is None:
        pass
    assert d.finish_reason == "error" and "engine process exited" in d.error
    with pytest.raises(EngineStoppedError, match="closed"):
        e.stats()
    e.close()

    # a call in progress when the engine process dies fails (and its request gets no delta)
    e = EngineProcess(dict(model=folder, **LLM_ARGS), {})
    os.kill(e._process.pid, signal.SIGSTOP)
    outcome: list = []

    def submit() -> None:
        try:
            e.submit(prompt(4, 8), GREEDY, q.put)
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)

    caller = threading.Thread(target=submit)
    caller.start()
    caller.join(timeout=1)
    assert caller.is_alive()  # waiting for the stopped engine process
    os.kill(e._process.pid, signal.SIGKILL)
    caller.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], EngineStoppedError), outcome
    assert q.empty()
    e.close()
