"""Mixed steps (LLM(batch_invariant=False)): each step takes every decoding sequence's token and
prompt chunks in the budget left, so decodes never wait for a prompt step. The scheduler's steps,
and on the CPU (whose kernels give a row the same bits in any step) every request's output equal to
what it gets alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from kvinfer.scheduler import Request, Scheduler  # noqa: E402
from kvinfer.serving import ServingEngine  # noqa: E402
from tiny_models import VOCAB, make_model  # noqa: E402

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("mixed") / "m"))


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def test_a_mixed_step_holds_the_decodes_and_prompt_chunks_in_the_rest_of_the_budget(folder):
    llm = LLM(folder, device="cpu", max_context=1024, max_batch=4)
    free = list(range(4))
    sched = Scheduler(256, 1024, lambda: free.pop(0) if free else None, free.append, llm.tokenizer,
                      max_prefill_while_decoding=64, mixed_steps=True)
    sched.add(Request("r0", prompt(300, 1), GREEDY, 0, frozenset()))
    first = sched.schedule()  # nothing decodes: the whole budget
    assert [(c.seq.request.request_id, c.num_tokens) for c in first.chunks] == [("r0", 256)]
    r0 = first.chunks[0].seq
    r0.cached, r0.token_ids, r0.launched = 300, [1], 1  # r0's prompt is done (44 tokens skipped here)
    sched.add(Request("r1", prompt(300, 2), GREEDY, 0, frozenset()))
    steps = [sched.schedule() for _ in range(2)]
    for s in steps:  # r0's token first, then 64 of r1's prompt (the cap beside decodes), in every step
        assert [(c.seq.request.request_id, c.num_tokens, c.samples) for c in s.chunks] == \
            [("r0", 1, True), ("r1", 64, False)]
        r0.launched += 1
        s.chunks[1].seq.cached += 64
    turns = Scheduler(256, 1024, lambda: None, free.append, llm.tokenizer)
    assert not turns.mixed_steps  # the default: decodes and prompt chunks take turns
    # beside decodes a mixed step takes half the budget of prompt tokens unless told otherwise
    assert turns.max_prefill_while_decoding == 256
    assert Scheduler(256, 1024, lambda: None, free.append, llm.tokenizer,
                     mixed_steps=True).max_prefill_while_decoding == 128
    assert sched.max_prefill_while_decoding == 64


class StepKinds:
    """Stands in for the runner: counts steps with decode rows and prompt rows together."""

    def __init__(self, runner):
        self.runner, self.mixed, self.steps = runner, 0, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def launch(self, **kwargs):
        lengths = np.diff(kwargs["query_starts"])
        self.steps += 1
        self.mixed += int((lengths == 1).any() and (lengths > 1).any())
        self.runner.launch(**kwargs)


def test_mixed_steps_give_each_request_what_it_gets_alone_on_the_cpu(folder):
    mixed = LLM(folder, device="cpu", max_context=256, max_batch=4, max_step_tokens=16, batch_invariant=False)
    turns = LLM(folder, device="cpu", max_context=256, max_batch=4, max_step_tokens=16)
    prompts = [prompt(n, 10 + i) for i, n in enumerate([5, 40, 1, 70, 17, 33, 90, 12, 3])]  # more than 4 slots
    params = [GREEDY, SamplingParams(max_tokens=20, temperature=0.9, top_k=40, seed=3, ignore_eos=True)] * 5
    alone = [turns.generate([p], q)[0].token_ids for p, q in zip(prompts, params)]
    kinds = StepKinds(mixed.runner)
    mixed.runner = kinds
    engine = ServingEngine(mixed)
    out: list[list[int] | None] = [None] * len(prompts)

    def one(i: int) -> None:
        out[i] = [t for d in engine.generate(prompts[i], params[i]) for t in d.token_ids]

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        engine.close()
    assert out == alone
    assert kinds.mixed > 0, f"no step of {kinds.steps} held decodes and prompt chunks together"
    assert mixed.engine.free_slots() == mixed.max_batch and mixed.engine.blocks.used_blocks() == 0
