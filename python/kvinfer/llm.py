"""LLM: load a model folder into an Engine and generate text (vLLM-like API)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

import kvinfer
from kvinfer import _core
from kvinfer.config import attention_window, model_config, read_config_json
from kvinfer.models import resolve_model
from kvinfer.planner import fit_to_memory, parse_bytes, plan_for_config
from kvinfer.sampling import SamplingParams
from kvinfer.tokenizer import StreamDecoder, Tokenizer
from kvinfer.weights import load_weights

Prompt = str | Sequence[int]


@dataclass
class RequestOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"


@dataclass
class _Sequence:
    index: int
    slot: int
    prompt_ids: list[int]
    seed: int
    token_ids: list[int]
    decoder: StreamDecoder
    text: str = ""
    finish_reason: str | None = None


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda:0" if kvinfer.cuda_available() and _core.cuda_forward_available() else "cpu"


class LLM:
    """A model ready to generate. `model`: a Hugging Face folder, a .gguf file, or None for the
    embedded default (SmolLM2-135M-Instruct). `max_context` tokens per sequence (default: the
    model's, at most 2048), `max_batch` sequences at once (default 8), `max_step_tokens` tokens per
    forward step (the prefill chunk). `max_memory` ("8GiB", bytes) sizes whatever of max_batch /
    max_context is left open to fit, and fails before allocating when nothing fits; `self.plan`
    holds the memory plan, which the tracker's report equals after loading."""

    def __init__(self, model: str | None = None, device: str = "auto", max_context: int | None = None,
                 max_batch: int | None = None, max_step_tokens: int = 512,
                 tracker: kvinfer.VramTracker | None = None, progress: bool = False,
                 max_memory: str | int | None = None):
        self.folder = resolve_model(model, progress=progress)
        hf = read_config_json(self.folder)
        self.config = model_config(hf)
        self.tokenizer = Tokenizer(self.folder)
        self.device = _pick_device(device)
        name = os.path.basename(os.path.normpath(self.folder))
        if max_memory is not None:
            memory = parse_bytes(max_memory)
            self.plan = fit_to_memory(name, hf, memory, max_context, max_batch, self.device, max_step_tokens)
            if tracker is None:  # enforce the budget on what kvinfer allocates
                tracker = kvinfer.VramTracker(budget_bytes=memory - self.plan.cuda_context_bytes)
        else:
            window = attention_window(hf)
            limit = min(self.config.max_positions, window or self.config.max_positions)
            if max_context is not None and not 1 <= max_context <= limit:
                why = f"its sliding window is {window}" if window and window < self.config.max_positions \
                    else f"it has {self.config.max_positions} positions"
                raise ValueError(f"max_context={max_context} is not in [1, {limit}] for this model ({why})")
            self.plan = plan_for_config(name, hf, max_context, max_batch or 8, "fp16", None, "fp16",
                                        self.device, max_step_tokens)
        self.max_context, self.max_batch = self.plan.context, self.plan.batch
        engine = _core.Engine(self.config, self.device, self.max_batch, self.max_context,
                              max(int(self.plan.step_tokens), self.max_batch), tracker)
        try:
            load_weights(engine, self.config, self.folder, progress=progress)
        except BaseException:
            engine.release()  # the traceback keeps `engine` alive; its memory must not stay held
            raise
        self.engine = engine

    # ---- prompts -------------------------------------------------------------------------------
    def _encode(self, prompt: Prompt) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range [0, {self.config.vocab_size})")
        return ids

    def _check_fits(self, ids: list[int], params: SamplingParams) -> None:
        if len(ids) + params.max_tokens > self.max_context:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = "
                             f"{len(ids) + params.max_tokens} exceeds max_context={self.max_context}")

    @staticmethod
    def _as_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
        if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))):
            return [prompts]
        return list(prompts)

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None) -> list[RequestOutput]:
        params = params or SamplingParams()
        items = self._as_list(prompts)
        encoded = [self._encode(p) for p in items]
        for ids in encoded:
            self._check_fits(ids, params)
        outputs: list[RequestOutput] = []
        for start in range(0, len(encoded), self.max_batch):
            wave = encoded[start:start + self.max_batch]
            seqs = self._run(wave, params)
            outputs += [RequestOutput(items[start + s.index] if isinstance(items[start + s.index], str) else None,
                                      s.prompt_ids, s.text, s.token_ids, s.finish_reason) for s in seqs]
        return outputs

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yields text pieces as they are produced (stop strings are never emitted)."""
        params = params or SamplingParams()
        ids = self._encode(prompt)
        self._check_fits(ids, params)
        emitted = 0
        hold = max((len(s) for s in params.stop), default=1) - 1  # a stop string may be half-written
        for seq in self._steps(self._sequences([ids], params), params):
            safe = len(seq.text) if seq.finish_reason else max(emitted, len(seq.text) - hold)
            if safe > emitted:
                yield seq.text[emitted:safe]
                emitted = safe

    def chat(self, messages: list[dict[str, str]], params: SamplingParams | None = None) -> RequestOutput:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.generate([self.tokenizer.encode(prompt, add_special_tokens=False)], params)[0]

    def logits(self, token_ids: Sequence[int], hidden_states: bool = False):
        """float32 [len, vocab]: the logits after every position of one causal pass. With
        hidden_states=True also returns the residual stream after the embedding and after each
        layer, float32 [num_layers + 1, len, hidden]."""
        ids = self._encode(token_ids)
        if len(ids) > self.max_context:
            raise ValueError(f"{len(ids)} tokens exceed max_context={self.max_context}")
        c = self.config
        out = np.empty((len(ids), c.vocab_size), np.float32)
        states = np.empty((c.num_layers + 1, len(ids), c.hidden_size), np.float32) if hidden_states else None
        step = self.engine.max_tokens
        cache = self.engine.cache
        cache.clear(0)
        try:
            for t0 in range(0, len(ids), step):
                chunk = np.asarray(ids[t0:t0 + step], np.int32)
                part = np.empty((c.num_layers + 1, len(chunk), c.hidden_size), np.float32) if hidden_states else None
                self.engine.forward(chunk, np.zeros(1, np.int32), np.array([0, len(chunk)], np.int32),
                                    out[t0:t0 + len(chunk)], part)
                if hidden_states:
                    states[:, t0:t0 + len(chunk)] = part
        finally:
            cache.clear(0)
        return (out, states) if hidden_states else out

    # ---- the generation loop -------------------------------------------------------------------
    def _run(self, prompts: list[list[int]], params: SamplingParams) -> list[_Sequence]:
        seqs = self._sequences(prompts, params)
        for _ in self._steps(seqs, params):
            pass
        return seqs

    def _sequences(self, prompts: list[list[int]], params: SamplingParams) -> list[_Sequence]:
        """One wave (len(prompts) <= max_batch), slot i for prompt i. Each sequence draws from its
        own stream of random numbers, a function of (seed, token index) only, so a prompt samples the
        same alone or in a batch."""
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        return [_Sequence(i, i, ids, seed, [], StreamDecoder(self.tokenizer)) for i, ids in enumerate(prompts)]

    def _steps(self, seqs: list[_Sequence], params: SamplingParams) -> Iterator[_Sequence]:
        """Runs a wave to the end; yields a sequence after each token it gets."""
        eos = set() if params.ignore_eos else self.tokenizer.eos_token_ids
        stop_ids = eos | set(params.stop_token_ids)
        for s in seqs:
            self.engine.cache.clear(s.slot)
        try:
            for s, token in self._prefill(seqs, params):
                yield from self._accept(s, token, params, stop_ids)
            while True:
                active = [s for s in seqs if s.finish_reason is None]
                if not active:
                    break
                tokens = np.array([s.token_ids[-1] for s in active], np.int32)
                slots = np.array([s.slot for s in active], np.int32)
                self.engine.forward(tokens, slots, np.arange(len(active) + 1, dtype=np.int32))
                for s, token in zip(active, self._sample(active, params)):
                    yield from self._accept(s, int(token), params, stop_ids)
        finally:
            for s in seqs:
                self.engine.cache.clear(s.slot)

    def _sample(self, seqs: list[_Sequence], params: SamplingParams) -> np.ndarray:
        """Token ids for the rows of the last forward step, chosen where the logits are."""
        p = params
        return self.engine.sample([(p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty,
                                    s.seed, len(s.token_ids)) for s in seqs])

    def _prefill(self, seqs: list[_Sequence], params: SamplingParams) -> Iterator[tuple[_Sequence, int]]:
        """Packs prompt chunks into steps of at most max_tokens tokens (one chunk per slot per
        step); yields (sequence, first token) for each sequence whose prompt ends in a step."""
        budget_max = self.engine.max_tokens
        pending = [(s, 0) for s in seqs]  # (sequence, tokens of its prompt already prefilled)
        while pending:
            step, budget, rest = [], budget_max, []
            for s, done in pending:
                n = min(len(s.prompt_ids) - done, budget)
                if n == 0:
                    rest.append((s, done))
                    continue
                step.append((s, done, n))
                budget -= n
                if done + n < len(s.prompt_ids):
                    rest.append((s, done + n))
            tokens = np.concatenate([np.asarray(s.prompt_ids[d:d + n], np.int32) for s, d, n in step])
            starts = np.cumsum([0] + [n for _, _, n in step]).astype(np.int32)
            self.engine.forward(tokens, np.array([s.slot for s, _, _ in step], np.int32), starts)
            sampled = self._sample([s for s, _, _ in step], params)
            for b, (s, d, n) in enumerate(step):
                if d + n == len(s.prompt_ids):
                    yield s, int(sampled[b])
            pending = rest

    def _accept(self, s: _Sequence, token: int, params: SamplingParams, stop_ids: set[int]) -> Iterator[_Sequence]:
        s.token_ids.append(token)
        s.text += s.decoder.push(token)
        if token in stop_ids:
            s.finish_reason = "stop"
        for stop in params.stop:
            at = s.text.find(stop)
            if at >= 0:
                s.text, s.finish_reason = s.text[:at], "stop"
        if s.finish_reason is None and len(s.token_ids) >= params.max_tokens:
            s.finish_reason = "length"
        yield s

    def close(self) -> None:
        """Frees the model's memory now."""
        self.engine.release()
