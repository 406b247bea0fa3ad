"""Helpers that drive a Runner step by step, for tests that compare steps with each other."""

from __future__ import annotations

import numpy as np

from kvinfer.llm import LLM


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
