"""SamplingParams: what the engine's sampler (cpp/types/sampling_args.h, the same algorithm on the CPU
and the GPU) applies, in the order HF's generate does: repetition penalty, then OpenAI's
presence/frequency penalties, logit biases, temperature, top-k, top-p, min-p, then a draw.
Temperature 0 is greedy (argmax; ties go to the lowest id). The repetition penalty counts the
prompt and the generated tokens; presence and frequency penalties only the generated ones
(x -= frequency_penalty * count + presence_penalty * (count > 0)). `logit_bias` adds to a token's
logit (-inf bans it); `min_tokens` bans the stop ids (end of sequence unless ignore_eos, and
stop_token_ids) and holds back stop strings until that many tokens are out. `logprobs=N` returns,
for every generated token, its log-probability and the N most likely tokens' under the model's
own distribution (log-softmax of the logits, before any penalty, bias or temperature)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from kvinfer import _core

# logit_bias entries of a request (the native limit per row leaves room for the stop ids that
# min_tokens bans)
MAX_LOGIT_BIAS = _core.MAX_LOGIT_BIAS_PER_ROW - 20
MAX_LOGPROBS = 20  # top log-probabilities per token (OpenAI's limit)


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
    min_tokens: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: off; N: the sampled token's and the top N (N <= MAX_LOGPROBS)

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} must be {rule}")

        def is_int(v) -> bool:  # True is not a count
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        check(is_int(self.max_tokens) and 1 <= self.max_tokens < 2**31, "max_tokens", "an integer in [1, 2^31)")
        check(is_num(self.temperature) and self.temperature >= 0, "temperature", "a finite number >= 0 (0 is greedy)")
        check(is_int(self.top_k) and 0 <= self.top_k < 2**31, "top_k", "an integer >= 0 (0 disables it)")
        check(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]")
        check(is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "in [0, 1]")
        check(is_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
              "a finite number > 0 (1 disables it)")
        check(self.seed is None or (is_int(self.seed) and 0 <= self.seed < 2**64), "seed",
              "an integer in [0, 2^64) or None")
        check(isinstance(self.ignore_eos, bool), "ignore_eos", "True or False")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        check(isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop), "stop",
              "a non-empty string or a list of them")
        self.stop = list(self.stop)
        check(isinstance(self.stop_token_ids, (list, tuple)) and
              all(is_int(t) and 0 <= t < 2**31 for t in self.stop_token_ids), "stop_token_ids",
              "a list of token ids >= 0")
        check(is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens, "min_tokens",
              "an integer in [0, max_tokens]")
        check(isinstance(self.logit_bias, dict) and len(self.logit_bias) <= MAX_LOGIT_BIAS and
              all(is_int(t) and 0 <= t < 2**31 and isinstance(b, numbers.Real) and not isinstance(b, bool) and
                  (math.isfinite(b) or b == -math.inf) for t, b in self.logit_bias.items()), "logit_bias",
              f"a dict of at most {MAX_LOGIT_BIAS} token ids >= 0 to finite biases (or -inf)")
        self.logit_bias = {int(t): float(b) for t, b in self.logit_bias.items()}
        for name in ("presence_penalty", "frequency_penalty"):
            check(is_num(getattr(self, name)) and -2 <= getattr(self, name) <= 2, name, "a number in [-2, 2]")
        check(self.logprobs is None or (is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS), "logprobs",
              f"None or an integer in [0, {MAX_LOGPROBS}]")

    @property
    def reads_history(self) -> bool:
        """Whether the sampler reads the sequence's token history (penalties): its tokens must all
        have been computed in its own slot, so no cached prefix is reused."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def check_vocab(self, vocab_size: int) -> None:
        """ValueError for a token id the model does not have (logit_bias, stop_token_ids)."""
        for name, ids in (("logit_bias", self.logit_bias), ("stop_token_ids", self.stop_token_ids)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise ValueError(f"SamplingParams.{name} has token id {bad[0]}, beyond the vocabulary of {vocab_size}")

    def biases(self, stop_ids, generated: int) -> list[tuple[int, float]]:
        """The (token, bias) entries of the next sampled row of a sequence with `generated` tokens:
        logit_bias, and -inf on the stop ids while fewer than min_tokens are out."""
        out = dict(self.logit_bias)
        if generated < self.min_tokens:
            out.update((t, -math.inf) for t in stop_ids)
        return list(out.items())
