"""SamplingParams and next-token selection from logits, in the order HF's generate applies them:
repetition penalty, temperature, top-k, top-p, min-p, then a draw from the softmax. Temperature 0
is greedy (argmax; ties go to the lowest id)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} must be {rule}")

        check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", "an integer >= 1")
        check(self.temperature >= 0, "temperature", ">= 0 (0 is greedy)")
        check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0 (0 disables it)")
        check(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        check(0 <= self.min_p <= 1, "min_p", "in [0, 1]")
        check(self.repetition_penalty > 0, "repetition_penalty", "> 0 (1 disables it)")
        check(self.seed is None or isinstance(self.seed, int), "seed", "an integer or None")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "a list of non-empty strings")
        check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              "a list of token ids >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           previous: list[int] | None = None) -> int:
    """One token id from a [vocab] float32 row of logits."""
    x = np.array(logits, dtype=np.float32, copy=True)
    if params.repetition_penalty != 1.0 and previous:
        seen = np.unique(np.asarray(previous, dtype=np.int64))
        vals = x[seen]
        x[seen] = np.where(vals < 0, vals * params.repetition_penalty, vals / params.repetition_penalty)
    if params.greedy:
        return int(np.argmax(x))
    x /= params.temperature
    if params.top_k and params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x[x < kth] = -np.inf
    if params.top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        probs = _softmax(x[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cut = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        x[order[cut:]] = -np.inf
    probs = _softmax(x)
    if params.min_p > 0:
        probs[probs < params.min_p * probs.max()] = 0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
