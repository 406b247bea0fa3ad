"""The engine loop that LLM.generate and LLM.stream run on (kvinfer.serving), on every device: it keeps
two steps in flight and checks stops one step late; it must give exactly what synchronous steps of
one sequence alone give. One LLM shared between threads, a suspended stream beside a generate(),
and a close() racing a generate() never corrupt a result or crash."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from conftest import DEVICES  # noqa: E402
from step_helpers import reference_ids  # noqa: E402
from tiny_models import VOCAB, make_model  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("loop") / "m"))


@pytest.fixture(scope="module", params=DEVICES)
def llm(folder, request):
    return LLM(folder, device=request.param, max_context=128, max_batch=4, max_step_tokens=32,
               tracker=kvinfer.VramTracker())


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def streamed_ids(llm: LLM, ids: list[int], params: SamplingParams) -> list[int]:
    return reference_ids(llm, ids, params, params.seed or 0)


PARAMS = [SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, seed=0),
          SamplingParams(max_tokens=25, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=7,
                         ignore_eos=True),
          SamplingParams(max_tokens=40, temperature=0.7, presence_penalty=0.8, frequency_penalty=1.5, seed=3,
                         ignore_eos=True)]


@pytest.mark.parametrize("params", PARAMS)
def test_pipelined_generate_equals_step_by_step(llm, params):
    """Each prompt alone, and all at once, equal synchronous steps. On CUDA a prompt's K/V may differ
    in the last bits with how prompts share a prefill step (its GEMMs' kernel depends on the step's
    rows; decode steps do not), which can move a seeded draw: there, all at once is compared for
    greedy decoding only."""
    prompts = [prompt(n, 40 + n) for n in (3, 20, 45, 33, 7)]  # more prompts than slots: some wait
    want = [streamed_ids(llm, p, params) for p in prompts]
    assert [llm.generate(p, params)[0].token_ids for p in prompts] == want
    outs = llm.generate(prompts, params)
    assert [len(o.token_ids) for o in outs] == [params.max_tokens] * 5
    if llm.device == "cpu" or params.temperature == 0:
        assert [o.token_ids for o in outs] == want


def test_a_stop_seen_one_step_late_drops_the_extra_token(llm):
    """Each sequence stops at a token it produces mid-way; its next step is already in flight when
    that token is read. The other sequences must not notice."""
    prompts = [prompt(n, 60 + n) for n in (5, 9, 14)]
    free = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    full = [o.token_ids for o in llm.generate(prompts, free)]
    stop = full[0][6]  # sequence 0 stops at its 7th token; the others may too, wherever it occurs
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop_token_ids=[stop])
    outs = llm.generate(prompts, params)
    for o, ids in zip(outs, full):
        cut = ids.index(stop) + 1 if stop in ids else len(ids)
        assert o.token_ids == ids[:cut]
        assert o.finish_reason == ("stop" if stop in ids else "length")
    assert len(outs[0].token_ids) == 7
    assert llm.engine.free_slots() == 4 and llm.runner.steps_in_flight == 0


def test_two_threads_share_one_llm(llm):
    params = PARAMS[1]
    work = {i: [prompt(8 + 3 * i, 80 + i)] * (1 + i % 3) for i in range(6)}
    expected = {i: [o.token_ids for o in llm.generate(p, params)] for i, p in work.items()}
    got: dict[int, list[list[int]]] = {}
    errors: list[BaseException] = []

    def worker(keys):
        try:
            for i in keys:
                got[i] = [o.token_ids for o in llm.generate(work[i], params)]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ([0, 2, 4], [1, 3, 5])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == expected


def test_a_suspended_stream_and_a_generate_keep_their_outputs(llm):
    params = PARAMS[1]
    ids = prompt(12, 5)
    alone = "".join(llm.stream(ids, params))
    stream = llm.stream(ids, params)
    first = [next(stream) for _ in range(3)]
    other = llm.generate([prompt(30, 6)] * 3, params)  # takes the other slots while the stream waits
    assert len(other) == 3
    assert "".join(first) + "".join(stream) == alone
    assert llm.engine.free_slots() == 4


def test_close_racing_a_generate_fails_cleanly(folder, device):
    llm = LLM(folder, device=device, max_context=128, max_batch=2, tracker=kvinfer.VramTracker())
    result: list[object] = []

    def run():
        try:
            result.append(llm.generate([prompt(40, 1)] * 2, SamplingParams(max_tokens=60, temperature=0,
                                                                            ignore_eos=True)))
        except ValueError as e:  # the model was closed between two steps
            result.append(e)

    t = threading.Thread(target=run)
    t.start()
    llm.close()
    t.join()
    assert len(result) == 1
    if isinstance(result[0], ValueError):
        assert "closed" in str(result[0])
    else:
        assert all(len(o.token_ids) == 60 for o in result[0])
    with pytest.raises(ValueError, match="closed"):
        llm.generate([1, 2, 3])


def test_streams_in_two_threads_keep_their_outputs(llm):
    params = PARAMS[1]
    prompts = [prompt(9, 70), prompt(21, 71)]
    alone = ["".join(llm.stream(p, params)) for p in prompts]
    got: dict[int, str] = {}

    def work(i):
        got[i] = "".join(llm.stream(prompts[i], params))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[0], got[1]] == alone


def test_an_abandoned_stream_leaves_nothing_in_flight(llm):
    params = PARAMS[0]
    s = llm.stream(prompt(10, 90), params)
    next(s)
    s.close()
    deadline = time.monotonic() + 30  # the abort lands within a step of the engine thread
    while not (llm.runner.steps_in_flight == 0 and llm.engine.free_slots() == 4):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert llm.generate([prompt(10, 90)], params)[0].token_ids == streamed_ids(llm, prompt(10, 90), params)


def test_batch_invariant_off_changes_nothing_on_the_cpu(folder):
    """The CPU backend's GEMMs never depend on the batch: batch_invariant=False (which lets CUDA
    take cuBLAS for larger decode steps) gives the same tokens there."""
    kw = dict(device="cpu", max_context=128, max_batch=4, max_step_tokens=32)
    exact, fast = LLM(folder, **kw), LLM(folder, batch_invariant=False, **kw)
    prompts = [prompt(n, 40 + n) for n in (3, 9, 20)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    want = [o.token_ids for o in exact.generate(prompts, params)]
    assert len(want) == 3 and all(len(t) == 12 for t in want)
    assert [o.token_ids for o in fast.generate(prompts, params)] == want
    exact.close(), fast.close()


def test_back_to_back_calls_share_one_engine_thread_which_ends_when_idle(folder, monkeypatch):
    """The engine thread waits IDLE_LINGER_S for more work before it ends: back-to-back generate()
    calls run on one thread (a thread start each was ~0.1 ms of every call's latency), an idle
    engine keeps none, and dropping the LLM while its thread lingers frees it at once."""
    import weakref

    from kvinfer import serving

    monkeypatch.setattr(serving.ServingEngine, "IDLE_LINGER_S", 0.5)
    model = LLM(folder, device="cpu", max_context=64, max_batch=2, max_step_tokens=32)
    params = SamplingParams(max_tokens=2, temperature=0)
    model.generate(prompt(5, 1), params)
    first = model._serving._thread
    assert first is not None and first.is_alive()
    model.generate(prompt(6, 2), params)
    assert model._serving._thread is first  # the same thread took the second call
    first.join(timeout=10)
    assert not first.is_alive() and model._serving._thread is None  # idle: it ended
    model.generate(prompt(7, 3), params)  # a new one starts on demand
    lingering, ref = model._serving._thread, weakref.ref(model)
    assert lingering is not None and lingering.is_alive()
    del model  # while its thread lingers: nothing there keeps the LLM alive, and the thread ends with it
    assert ref() is None
    lingering.join(timeout=10)
    assert not lingering.is_alive()
