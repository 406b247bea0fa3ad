"""Helpers that drive a Runner step by step, for tests that compare steps with each other."""

from __future__ import annotations

import numpy as np

from kvinfer.llm import LLM
from kvinfer.step_inputs import SAMPLING_DTYPE


def decode_rows(llm: LLM, ids: list[int], first: int, slot: int = 1) -> np.ndarray:
    """Logits of rows first-1 .. len(ids)-1: a prefill of ids[:first], then one decode step per
    token, each step's logits copied out of the runner."""
    r, vocab = llm.runner, llm.config.vocab_size
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    rows = [np.empty((1, vocab), np.float32) for _ in range(len(ids) - first + 1)]
    r.step(np.asarray(ids[:first], np.int32), i32(0, first), i32(0), i32(slot), i32(first - 1), logits=rows[0])
    for t in range(first, len(ids)):
        r.step(i32(ids[t]), i32(0, 1), i32(t), i32(slot), i32(0), logits=rows[t - first + 1])
    return np.concatenate(rows)


def greedy_args(n: int) -> np.ndarray:
    """[n] sampling arguments of plain greedy rows."""
    args = np.zeros(n, SAMPLING_DTYPE)
    args["top_p"] = args["repetition_penalty"] = 1.0
    return args


def reference_ids(llm: LLM, ids: list[int], params, seed: int) -> list[int]:
    """The tokens one sequence gets from synchronous steps alone (a whole-prompt prefill in chunks,
    then one decode step at a time, each waited for): what the pipelined engine loop must equal.
    Stops only at max_tokens (params must have ignore_eos and no stop ids or strings)."""
    from kvinfer.engine import Slot

    r, engine = llm.runner, llm.engine
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    args = greedy_args(1)
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty"):
        args[name] = getattr(params, name)
    args["seed"], args["output_start"] = seed, len(ids)
    seq = Slot(engine.take_slots(1)[0])
    out: list[int] = []
    try:
        engine.begin(seq, ids, reuse=False)
        with engine.lock:
            step = r.max_step_tokens
            for t0 in range(0, len(ids), step):
                n = min(step, len(ids) - t0)
                last = t0 + n == len(ids)
                got = r.step(np.asarray(ids[t0:t0 + n], np.int32), i32(0, n), i32(t0), i32(seq.slot),
                             i32(n - 1) if last else i32(), args if last else None,
                             block_tables=engine.tables([seq]))
                seq.cached = t0 + n
            out.append(int(got[0]))
            while len(out) < params.max_tokens:
                engine.grow(seq, seq.cached + 1)
                args["step"] = len(out)
                got = r.step(i32(out[-1]), i32(0, 1), i32(seq.cached), i32(seq.slot), i32(0), args,
                             block_tables=engine.tables([seq]))
                seq.cached += 1
                out.append(int(got[0]))
    finally:
        engine.end(seq, ids + out)
        engine.give_back([seq.slot])
    return out
