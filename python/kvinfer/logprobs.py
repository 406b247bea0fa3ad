"""Log-probabilities of sampled tokens: the model's own distribution (log-softmax of the logits the
LM head produced, before penalties, biases or temperature), as vLLM returns by default. A step
with a row that asks for them copies its logits to the host; rows that did not ask cost nothing
more."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Logprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), most likely first

    def __post_init__(self) -> None:
        if not self.logprob <= 0.0:
            raise ValueError(f"logprob={self.logprob} of token {self.token_id} must be <= 0")


def logprob_of(logits: np.ndarray, token: int, top: int) -> Logprob:
    """The log-probability of `token` under float32 `logits` [vocab] and the `top` most likely ids
    (ties: the lower id first)."""
    x = logits.astype(np.float64)
    mx = x.max()
    lse = mx + np.log(np.exp(x - mx).sum())
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(-x, top - 1)[:top] if top < len(x) else np.arange(len(x))
        ids = sorted(ids.tolist(), key=lambda i: (-x[i], i))
        best = [(i, min(0.0, float(x[i] - lse))) for i in ids]
    return Logprob(int(token), min(0.0, float(x[token] - lse)), best)
