"""The serving engine without HTTP (kvinfer.serving, kvinfer.scheduler): continuous batching with
chunked prefill gives every request exactly what it gets alone; seeded sampling too; abort works at
every stage and frees the slot; the queue bound; close() ends what is running."""

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
from kvinfer.serving import QueueFullError, ServingEngine  # noqa: E402
from conftest import DEVICES  # noqa: E402
from tiny_models import VOCAB, make_model  # noqa: E402

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("serving") / "m"))


@pytest.fixture(scope="module", params=DEVICES)
def llm(folder, request):
    # 16 tokens a step: prompts are prefilled in chunks that share steps with other sequences' decodes
    return LLM(folder, device=request.param, max_context=256, max_batch=4, max_step_tokens=16,
               tracker=kvinfer.VramTracker())


@pytest.fixture
def engine(llm):
    e = ServingEngine(llm)
    yield e
    e.close()
    assert llm.engine.free_slots() == llm.max_batch


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def run_all(engine: ServingEngine, prompts, params) -> list[list[int]]:
    """Each prompt from its own thread, all at once."""
    out: list[list[int] | None] = [None] * len(prompts)

    def one(i: int) -> None:
        out[i] = [t for d in engine.generate(prompts[i], params[i]) for t in d.token_ids]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(o is not None for o in out)
    return out


def test_continuous_batching_equals_each_request_alone(llm, engine):
    prompts = [prompt(n, 10 + i) for i, n in enumerate([5, 40, 1, 70, 17, 33, 90, 12, 3])]  # more than 4 slots
    alone = [llm.generate(p, GREEDY)[0].token_ids for p in prompts]
    assert all(len(a) == GREEDY.max_tokens for a in alone)
    assert run_all(engine, prompts, [GREEDY] * len(prompts)) == alone
    assert engine.steps > 0


def test_seeded_sampling_is_independent_of_the_batch(llm, engine):
    params = [SamplingParams(max_tokens=20, temperature=0.9, top_k=40, top_p=0.95, seed=s, ignore_eos=True)
              for s in range(6)]
    prompts = [prompt(9 + 7 * i, 50 + i) for i in range(6)]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    assert run_all(engine, prompts, params) == alone


def test_stop_strings_and_text(llm, engine):
    ids = prompt(20, 3)
    full = llm.generate(ids, GREEDY)[0]
    stop = full.text[len(full.text) // 2:][:3]
    want = llm.generate(ids, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=[stop]))[0]
    deltas = list(engine.generate(ids, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=[stop])))
    assert "".join(d.text for d in deltas) == want.text and stop not in want.text
    assert [d.finish_reason for d in deltas].count("stop") == 1 and deltas[-1].finish_reason == "stop"


def wait_until(cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("stage", ["waiting", "prefill", "decode"])
def test_abort_at_every_stage_frees_the_slot(llm, engine, stage):
    got = []
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    if stage == "waiting":  # every slot held here: the request cannot be admitted
        slots = llm.engine.take_slots(llm.max_batch)
        try:
            rid = engine.submit(prompt(30, 1), params, got.append)
            wait_until(lambda: engine.stats()["waiting"] == 1)
            engine.abort(rid)
            wait_until(lambda: got and got[-1].finish_reason)
            assert got[-1].completion_tokens == 0
        finally:
            llm.engine.give_back(slots)
    else:
        # a 200-token prompt takes 13 steps of 16; 200 new tokens take 200 steps, so the abort lands
        # long before the request could finish on its own
        n, new = (200, 40) if stage == "prefill" else (5, 200)
        rid = engine.submit(prompt(n, 1), SamplingParams(max_tokens=new, temperature=0, ignore_eos=True), got.append)
        if stage == "decode":
            wait_until(lambda: len(got) >= 3)
        engine.abort(rid)
    wait_until(lambda: got and got[-1].finish_reason)
    assert got[-1].finish_reason == "abort" and [d.finish_reason for d in got].count("abort") == 1
    wait_until(lambda: engine.stats()["running"] == 0 and llm.engine.free_slots() == llm.max_batch)
    assert run_all(engine, [prompt(8, 2)], [GREEDY]) == [llm.generate(prompt(8, 2), GREEDY)[0].token_ids]


def test_requests_beyond_the_context_or_queue_are_refused(llm):
    engine = ServingEngine(llm, max_waiting=1)
    try:
        with pytest.raises(kvinfer.ContextOverflowError, match=r"= 257 exceeds max_context=256"):
            engine.submit(prompt(233, 1), GREEDY, lambda d: None)
        got = []
        slots = llm.engine.take_slots(llm.max_batch)  # nothing is admitted while these are held
        try:
            engine.submit(prompt(4, 1), GREEDY, got.append)
            with pytest.raises(QueueFullError, match="1 requests are waiting"):
                engine.submit(prompt(4, 2), GREEDY, got.append)
        finally:
            llm.engine.give_back(slots)
        wait_until(lambda: got and got[-1].finish_reason)
        assert got[-1].finish_reason == "length"
    finally:
        engine.close()


def test_close_ends_running_requests(llm):
    engine = ServingEngine(llm)
    got = []
    engine.submit(prompt(5, 4), SamplingParams(max_tokens=200, temperature=0, ignore_eos=True), got.append)
    wait_until(lambda: len(got) >= 2)
    engine.close()
    assert got[-1].finish_reason == "abort"
    assert llm.engine.free_slots() == llm.max_batch
    with pytest.raises(ValueError, match="closed"):
        engine.submit(prompt(5, 4), GREEDY, got.append)


def test_close_ends_requests_the_engine_thread_never_picked_up(llm):
    """A request submitted just before close() stops the thread, still in its inbox, ends with
    "abort" too (its caller would otherwise wait forever: a close() racing a generate() hung)."""
    engine = ServingEngine(llm)
    got = []
    with engine._cv:  # (re-entrant) the thread that submit starts waits here, before it reads its inbox
        engine.submit(prompt(5, 4), GREEDY, got.append)
        engine._stopping = True  # what close() sets first
    engine.close()
    assert [d.finish_reason for d in got] == ["abort"]
    assert llm.engine.free_slots() == llm.max_batch


def test_a_suspended_stream_beside_the_engine(llm, engine):
    """LLM.stream holds a slot while suspended; the engine's requests use the others and neither
    output changes."""
    ids = prompt(12, 8)
    want = llm.generate(ids, GREEDY)[0].token_ids
    stream = llm.stream(ids, GREEDY)
    next(stream)
    others = [prompt(6 + i, 60 + i) for i in range(5)]
    alone = [llm.generate(p, GREEDY)[0].token_ids for p in others]
    assert run_all(engine, others, [GREEDY] * 5) == alone
    for _ in stream:
        pass
    assert stream.output.token_ids == want


def test_generate_in_another_thread_while_decodes_are_pipelined(llm, engine):
    """The engine holds the runner while its decode steps are in flight and lets go every
    PIPELINE_RUN steps: LLM.generate from another thread gets its turn, and neither output changes."""
    long = SamplingParams(max_tokens=230, temperature=0, ignore_eos=True)
    ids, other = prompt(5, 9), prompt(7, 3)
    want_long, want_other = llm.generate(ids, long)[0].token_ids, llm.generate(other, GREEDY)[0].token_ids
    got = []
    engine.submit(ids, long, got.append)
    wait_until(lambda: len(got) >= 2)
    assert llm.generate(other, GREEDY)[0].token_ids == want_other
    wait_until(lambda: got[-1].finish_reason)
    assert [t for d in got for t in d.token_ids] == want_long and engine.steps >= 230


def test_a_receiver_that_fails_loses_only_its_own_request(llm, engine):
    def broken(delta):
        raise RuntimeError("the receiver's event loop is closed")

    engine.submit(prompt(6, 5), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True), broken)
    ids = prompt(9, 6)
    assert run_all(engine, [ids], [GREEDY]) == [llm.generate(ids, GREEDY)[0].token_ids]
    wait_until(lambda: engine.stats()["running"] == 0 and llm.engine.free_slots() == llm.max_batch)


@pytest.mark.parametrize("device", DEVICES)
def test_a_pool_too_small_for_every_sequence_preempts_and_changes_no_output(folder, device):
    """12 blocks of 16 tokens for 4 sequences that each grow to 6 blocks: sequences wait for blocks
    at admission and the newest are preempted as the running ones grow, then recompute their prompt
    and tokens so far; every request still gets exactly the tokens it gets alone, greedy or seeded,
    and LLM.generate on the same pool runs smaller waves with the same outputs."""
    small = LLM(folder, device=device, max_context=128, max_batch=4, max_step_tokens=32, kv_blocks=12)
    full = LLM(folder, device=device, max_context=128, max_batch=4, max_step_tokens=32)
    assert small.engine.blocks.num_blocks == 12 and small.plan.kv_blocks == 12
    prompts = [prompt(40 + 3 * i, 90 + i) for i in range(4)]
    # four different sampling settings: a sequence readmitted into another slot must not sample
    # with the arguments that slot held before
    params = [SamplingParams(max_tokens=50, temperature=0, ignore_eos=True),
              SamplingParams(max_tokens=50, temperature=0.9, top_k=30, seed=5, ignore_eos=True),
              SamplingParams(max_tokens=50, temperature=0.7, top_p=0.9, seed=6, ignore_eos=True),
              SamplingParams(max_tokens=50, temperature=1.1, min_p=0.05, seed=7, ignore_eos=True)]
    alone = [full.generate([p], q)[0].token_ids for p, q in zip(prompts, params)]
    engine = ServingEngine(small)
    try:
        assert run_all(engine, prompts, params) == alone
        assert engine.stats()["preemptions"] > 0
        assert engine.stats()["kv_blocks_used"] == 0
    finally:
        engine.close()
    greedy = params[0]
    assert [o.token_ids for o in small.generate(prompts, greedy)] == [o.token_ids for o in full.generate(prompts, greedy)]
    assert small.engine.blocks.used_blocks() == 0
    with pytest.raises(ValueError, match="kv_blocks=7 hold 112 tokens, fewer than one sequence of context=128"):
        LLM(folder, device=device, max_context=128, kv_blocks=7)


def test_requests_that_share_a_prompt_wait_for_its_prefill_and_reuse_it(llm):
    """Four requests with one 48-token system prompt, submitted together: the first prefills it,
    the others wait for that and find its three blocks cached; outputs are those of each alone."""
    system = prompt(48, 200)
    prompts = [system + prompt(6 + i, 210 + i) for i in range(4)]
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    # a step budget that could take all four prompts at once
    fresh = LLM(llm.folder, device=llm.device, max_context=256, max_batch=4, max_step_tokens=256)
    engine = ServingEngine(fresh)
    try:
        assert run_all(engine, prompts, [GREEDY] * 4) == alone
        assert engine.stats()["prefix_hit_tokens"] == 3 * 48
    finally:
        engine.close()


def test_the_scheduler_holds_back_a_request_whose_prefix_is_being_prefilled(llm):
    from kvinfer.scheduler import Request, Scheduler

    free = list(range(4))
    sched = Scheduler(256, 256, lambda: free.pop(0) if free else None, free.append, llm.tokenizer,
                      prefix_block=16)
    system = prompt(48, 300)
    for i, p in enumerate([system + [5], system + [6], prompt(30, 301)]):
        sched.add(Request(f"r{i}", p, GREEDY, 0, frozenset()))
    first = sched.schedule()
    # r1 shares r0's first block and waits behind it (the queue keeps its order: r2 waits too)
    assert [c.seq.request.request_id for c in first.chunks] == ["r0"] and len(sched.waiting) == 2
    r0 = first.chunks[0].seq
    r0.cached, r0.token_ids, r0.launched = 49, [1], 1  # r0's prompt is cached, its first token sampled
    assert [c.seq.request.request_id for c in sched.schedule().chunks] == ["r0"]  # decodes take turns
    assert [c.seq.request.request_id for c in sched.schedule().chunks] == ["r1", "r2"]


def test_prompt_steps_are_smaller_while_sequences_decode(llm):
    from kvinfer.scheduler import Request, Scheduler

    free = list(range(4))
    sched = Scheduler(256, 1024, lambda: free.pop(0) if free else None, free.append, llm.tokenizer,
                      max_prefill_while_decoding=64)
    sched.add(Request("r0", prompt(300, 400), GREEDY, 0, frozenset()))
    # nothing decodes: a prompt step takes the whole budget
    first = sched.schedule()
    assert [len(c.tokens) for c in first.chunks] == [256]
    r0 = first.chunks[0].seq
    r0.cached = 256
    assert [len(c.tokens) for c in sched.schedule().chunks] == [44]  # the rest of r0's prompt
    r0.cached, r0.token_ids, r0.launched = 300, [1], 1  # r0 decodes from here
    sched.add(Request("r1", prompt(300, 401), GREEDY, 0, frozenset()))
    steps = [sched.schedule() for _ in range(4)]
    # decodes and prompt steps take turns; a prompt step beside decoding sequences takes 64 tokens
    assert [c.num_tokens for s in steps for c in s.chunks] == [1, 64, 1, 64]
    assert [c.seq.request.request_id for s in steps for c in s.chunks] == ["r0", "r1", "r0", "r1"]
    with pytest.raises(ValueError, match="max_prefill_while_decoding"):
        Scheduler(256, 1024, lambda: None, free.append, llm.tokenizer, max_prefill_while_decoding=0)


def test_prompt_chunks_are_int32_slices_of_the_request_and_a_preempted_sequence_appends_its_tokens(llm):
    from kvinfer.scheduler import Request, Running, Scheduler
    from kvinfer.tokenizer import StreamDecoder

    ids = prompt(40, 500)
    r = Request("r0", ids, GREEDY, 0, frozenset())
    assert r.prompt_array.dtype == np.int32 and r.prompt_array.tolist() == ids
    assert not r.prompt_array.flags.writeable  # steps read it; the prefix cache hashes the ids
    assert r == Request("r0", ids, GREEDY, 0, frozenset())  # the array takes no part in equality
    with pytest.raises(ValueError, match="prompt_array"):  # the array must be the ids' int32 twin
        Request("r1", ids, GREEDY, 0, frozenset(), np.array(ids[:-1], np.int32))
    with pytest.raises(ValueError, match="prompt_array"):
        Request("r1", ids, GREEDY, 0, frozenset(), np.array(ids, np.int64))
    free = list(range(2))
    sched = Scheduler(16, 256, lambda: free.pop(0) if free else None, free.append, llm.tokenizer)
    sched.add(r)
    chunk = sched.schedule().chunks[0]
    assert chunk.tokens.dtype == np.int32 and chunk.tokens.tolist() == ids[:16] and not chunk.samples
    seq = Running(r, 0, StreamDecoder(llm.tokenizer))
    seq.token_ids = [7, 8, 9]  # preempted after three tokens: the prompt and all but the last are prefilled
    assert seq.prefill_array().tolist() == seq.prefill_ids() == ids + [7, 8]
