"""SamplingParams: what the engine's sampler (cpp/ops/sampling.h, the same algorithm on the CPU and
the GPU) applies, in the order HF's generate does: repetition penalty, temperature, top-k, top-p,
min-p, then a draw. Temperature 0 is greedy (argmax; ties go to the lowest id)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
