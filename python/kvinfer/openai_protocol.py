"""The OpenAI API's request fields turned into kvinfer's (prompts and SamplingParams), and kvinfer's
output into its response and stream-chunk objects. A bad field raises ApiError naming it, which the
server answers with OpenAI's error JSON."""

from __future__ import annotations

import math
import numbers
import re
import time
from dataclasses import dataclass

from kvinfer.sampling import SamplingParams

UNSUPPORTED = ("best_of", "suffix", "echo", "tools", "response_format")
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class Job:
    """One request as kvinfer runs it: its prompts (token ids), the parameters of each choice (n per
    prompt, seeds seed, seed + 1, ... so the choices differ yet repeat), streaming options."""
    prompts: list[list[int]]
    params: list[SamplingParams]    # n per prompt, in choice order
    n: int
    stream: bool
    include_usage: bool


def _get(body: dict, name: str, kinds, default=None, ok=lambda v: True, rule: str = ""):
    v = body.get(name, default)
    if v is None:
        return default
    number = kinds in (int, float)
    bad_type = isinstance(v, bool) and kinds is not bool
    if number:
        bad_type = bad_type or not isinstance(v, numbers.Real) or (kinds is int and not isinstance(v, numbers.Integral))
        bad_type = bad_type or not math.isfinite(v)
    elif not isinstance(v, kinds):
        bad_type = True
    if bad_type or not ok(v):
        raise ApiError(400, f"{name}={v!r} is invalid: it must be {rule or kinds.__name__}", name)
    return v


def _logprobs(body: dict, chat: bool) -> int | None:
    """How many top log-probabilities per token (None: none at all). Chat: logprobs (bool) and
    top_logprobs; completions: logprobs (the count)."""
    rule = f"an integer in [0, {MAX_TOP_LOGPROBS}]"
    if not chat:
        return _get(body, "logprobs", int, None, lambda v: 0 <= v <= MAX_TOP_LOGPROBS, rule)
    want = _get(body, "logprobs", bool, False)
    top = _get(body, "top_logprobs", int, None, lambda v: 0 <= v <= MAX_TOP_LOGPROBS, rule)
    if top is not None and not want:
        raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    return (top or 0) if want else None


def parse_job(body: dict, prompts: list[list[int]], max_context: int, default_max_tokens: int | None,
              chat: bool = False) -> Job:
    """The prompts with the SamplingParams of every choice and the streaming options, checked field
    by field."""
    prompt_lengths = [len(p) for p in prompts]
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, 0, [], {}):
            raise ApiError(400, f"{name} is not supported by this server yet", name)
    n = _get(body, "n", int, 1, lambda v: 1 <= v <= 128, "an integer in [1, 128]")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    longest = max(prompt_lengths)
    max_tokens = _get(body, name, int, default_max_tokens, lambda v: v >= 1, "an integer >= 1")
    if max_tokens is None:  # chat: what the context leaves
        max_tokens = max(1, max_context - longest)
    if longest + max_tokens > max_context:
        raise ApiError(400, f"This model's maximum context length is {max_context} tokens. However, you requested "
                            f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
                            "Please reduce the length of the prompt or the completion.", name)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise ApiError(400, f"stop={stop!r} is invalid: it must be a string or a list of strings", "stop")
    stop = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    top_k = _get(body, "top_k", int, 0, lambda v: v >= -1, "an integer >= -1 (-1 or 0 disable it)")
    seed = _get(body, "seed", int, None, lambda v: 0 <= v < 2**63, "an integer in [0, 2^63)")
    fields = dict(max_tokens=max_tokens, temperature=_get(body, "temperature", float, 1.0),
                  top_p=_get(body, "top_p", float, 1.0), top_k=max(top_k, 0), min_p=_get(body, "min_p", float, 0.0),
                  repetition_penalty=_get(body, "repetition_penalty", float, 1.0), stop=stop,
                  stop_token_ids=_get(body, "stop_token_ids", list, []),
                  ignore_eos=_get(body, "ignore_eos", bool, False),
                  presence_penalty=_get(body, "presence_penalty", float, 0.0),
                  frequency_penalty=_get(body, "frequency_penalty", float, 0.0), logprobs=_logprobs(body, chat))
    bias = _get(body, "logit_bias", dict, {})
    try:
        fields["logit_bias"] = {int(t): float(b) for t, b in bias.items()}
    except (TypeError, ValueError):
        raise ApiError(400, "logit_bias must map token ids to numbers", "logit_bias") from None
    if not all(-100 <= b <= 100 for b in fields["logit_bias"].values()):
        raise ApiError(400, "logit_bias values must be in [-100, 100]", "logit_bias")
    fields["min_tokens"] = _get(body, "min_tokens", int, 0, lambda v: 0 <= v <= max_tokens,
                                f"an integer in [0, max_tokens={max_tokens}]")
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    params = []
    for _ in prompt_lengths:
        for j in range(n):
            try:
                params.append(SamplingParams(**fields, seed=None if seed is None else seed + j))
            except ValueError as e:  # "SamplingParams.top_p=0.0 must be in (0, 1]"
                m = re.match(r"SamplingParams\.(\w+)=", str(e))
                raise ApiError(400, str(e).replace("SamplingParams.", ""), m.group(1) if m else None) from None
    return Job(prompts, params, n, stream, bool(options.get("include_usage", False)))


def completion_prompts(body: dict, encode) -> list[list[int]]:
    """`prompt`: a string, a list of token ids, or a list of either (several prompts)."""
    p = body.get("prompt")
    if isinstance(p, str):
        items = [p]
    elif isinstance(p, list) and p and set(map(type, p)) == {int}:  # JSON's integers (not true/false)
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        items = p
    else:
        raise ApiError(400, "prompt must be a string, a list of token ids, or a list of those", "prompt")
    try:
        return [encode(x) for x in items]
    except ValueError as e:
        raise ApiError(400, str(e), "prompt") from None


def now() -> int:
    return int(time.time())


def completion_logprobs(entries: list, text_of, offset: int) -> dict:
    """OpenAI's completions `logprobs` object for tokens whose text starts at `offset` characters
    into the completion; `text_of(id)` is a token's text."""
    tokens = [text_of(e.token_id) for e in entries]
    offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text_of(i): lp for i, lp in e.top} for e in entries], "text_offset": offsets}


def chat_logprobs(entries: list, text_of) -> dict:
    """OpenAI's chat `logprobs` object: per token its text, log-probability, UTF-8 bytes and top ones."""
    def item(token_id: int, logprob: float) -> dict:
        text = text_of(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [dict(item(e.token_id, e.logprob), top_logprobs=[item(i, lp) for i, lp in e.top])
                        for e in entries]}


def completion_body(rid: str, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": c["index"], "text": c["text"], "logprobs": c.get("logprobs"),
                         "finish_reason": c["finish_reason"]} for c in choices], "usage": usage}


def chat_body(rid: str, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                         "logprobs": c.get("logprobs"), "finish_reason": c["finish_reason"]} for c in choices],
            "usage": usage}


def completion_chunk(rid: str, model: str, index: int, text: str, finish_reason: str | None,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def chat_chunk(rid: str, model: str, index: int, delta: dict, finish_reason: str | None,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": now(), "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
