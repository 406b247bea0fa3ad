"""LLM: load a model folder (or GGUF) into a Runner and generate text (vLLM-like API). The
generation loop itself is kvinfer.engine."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Iterator, Sequence as Seq

import numpy as np

import kvinfer
from kvinfer import _core
from kvinfer.block_manager import OutOfBlocks
from kvinfer.config import attention_window, model_config, read_config_json
from kvinfer.engine import Engine, Sequence
from kvinfer.models import resolve_model
from kvinfer.planner import fit_to_memory, parse_bytes, plan_for_config
from kvinfer.sampling import SamplingParams
from kvinfer.tokenizer import StreamDecoder, Tokenizer
from kvinfer.weights import load_weights

Prompt = str | Seq[int]
log = logging.getLogger("kvinfer")


@dataclass
class RequestOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"


@dataclass
class Timings:
    prompt_tokens: int
    prompt_seconds: float = 0.0  # the prompt's prefill, up to its first token
    generated_tokens: int = 0
    decode_seconds: float = 0.0  # from the first token to the last


class TextStream:
    """The continuation of one prompt as text pieces (iterate it). `output` is the RequestOutput so
    far and `timings` the prompt and decode times; close() ends the generation early and frees its
    sequence slot (so does dropping it). The prompt is checked when the stream is made."""

    def __init__(self, llm: LLM, prompt: Prompt, params: SamplingParams):
        llm._check_open()
        self._llm, self.params = llm, params
        ids = llm._encode(prompt)
        llm._check_fits(ids, params)
        self.output = RequestOutput(prompt if isinstance(prompt, str) else None, ids, "", [], None)
        self.timings = Timings(len(ids))
        self._pieces = self._generate(ids)

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def _generate(self, ids: list[int]) -> Iterator[str]:
        llm, params, emitted = self._llm, self.params, 0
        hold = max((len(s) for s in params.stop), default=1) - 1  # a stop string may be half-written
        slots = llm.engine.take_slots(1)
        start = first = time.perf_counter()
        seqs = []
        try:
            seqs = llm._sequences([ids], slots, params)
            for seq in llm.engine.steps(seqs, params):
                now = time.perf_counter()
                if len(seq.token_ids) == 1:
                    first, self.timings.prompt_seconds = now, now - start
                self.timings.decode_seconds, self.timings.generated_tokens = now - first, len(seq.token_ids)
                self.output = RequestOutput(self.output.prompt, ids, seq.text, seq.token_ids, seq.finish_reason)
                safe = len(seq.text) if seq.finish_reason else max(emitted, len(seq.text) - hold)
                if safe > emitted:
                    yield seq.text[emitted:safe]
                    emitted = safe
        finally:
            llm._end(seqs)
            llm.engine.give_back(slots)


def _count(name: str, value, optional: bool = True):
    """A size argument: None (where optional) or an integer in [1, 2^31 - 1]; 0, 1.5 or True are
    errors, never defaults or truncations."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < 2**31:
        raise ValueError(f"{name}={value!r} must be an integer in [1, 2^31 - 1]")
    return int(value)


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
    holds the memory plan, which the tracker's report equals after loading. On CUDA, decode steps
    replay CUDA graphs captured at load (`cuda_graphs=False` runs them op by op); `self.graphs`
    says which batch sizes were captured, how long it took and the device memory they hold. A prompt
    that starts with the whole 16-token blocks of an earlier one reuses their K/V and prefills only
    the rest (`prefix_caching=False`: every prompt is computed in full). The KV cache is a pool of
    16-token blocks: by default a full context per sequence; `kv_blocks` sets it (or max_memory,
    which gives it the memory left), and with fewer blocks than max_batch full contexts need,
    sequences wait for blocks (generate runs smaller waves; the serving engine preempts).
    One LLM may be used from several threads: their calls are serialised."""

    def __init__(self, model: str | None = None, device: str = "auto", max_context: int | None = None,
                 max_batch: int | None = None, max_step_tokens: int = 512,
                 tracker: kvinfer.VramTracker | None = None, progress: bool = False,
                 max_memory: str | int | None = None, cuda_graphs: bool = True, prefix_caching: bool = True,
                 kv_blocks: int | None = None):
        max_context, max_batch = _count("max_context", max_context), _count("max_batch", max_batch)
        max_step_tokens = _count("max_step_tokens", max_step_tokens, optional=False)
        self.folder = resolve_model(model, progress=progress)
        hf = read_config_json(self.folder)
        self.config = model_config(hf)
        self.tokenizer = Tokenizer(self.folder)
        self.device = _pick_device(device)
        name = os.path.basename(os.path.normpath(self.folder))
        if max_memory is not None:
            if kv_blocks is not None:
                raise ValueError("give max_memory (the KV pool takes what is left) or kv_blocks, not both")
            memory = parse_bytes(max_memory)
            self.plan = fit_to_memory(name, hf, memory, max_context, max_batch, self.device, max_step_tokens)
            if tracker is None:  # enforce the budget on what kvinfer allocates
                tracker = kvinfer.VramTracker(budget_bytes=memory - self.plan.unallocated_bytes)
        else:
            window = attention_window(hf)
            limit = min(self.config.max_positions, window or self.config.max_positions)
            if max_context is not None and not 1 <= max_context <= limit:
                why = f"its sliding window is {window}" if window and window < self.config.max_positions \
                    else f"it has {self.config.max_positions} positions"
                raise ValueError(f"max_context={max_context} is not in [1, {limit}] for this model ({why})")
            self.plan = plan_for_config(name, hf, max_context, 8 if max_batch is None else max_batch, "fp16",
                                        None, "fp16", self.device, max_step_tokens, kv_blocks=kv_blocks)
        self.max_context, self.max_batch = self.plan.context, self.plan.batch
        runner = _core.Runner(self.config, self.device, self.max_batch, self.max_context,
                              self.plan.max_step_tokens, tracker, cuda_graphs, self.plan.kv_blocks,
                              self.plan.kv_block_size)
        try:
            load_weights(runner, self.config, self.folder, progress=progress)
            self.graphs = runner.capture_graphs()
            if self.graphs["batch_sizes"]:
                log.info("captured decode graphs for batch sizes %s in %.2f s (%d B of device memory)",
                         self.graphs["batch_sizes"], self.graphs["capture_seconds"], self.graphs["device_bytes"])
        except BaseException:
            runner.release()  # the traceback keeps `runner` alive; its memory must not stay held
            raise
        self.runner = runner
        self.engine = Engine(runner, self.tokenizer.eos_token_ids, prefix_caching)

    # ---- prompts -------------------------------------------------------------------------------
    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt):
                raise ValueError("a prompt of token ids must hold integers")
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range [0, {self.config.vocab_size})")
        return ids

    def _check_fits(self, ids: list[int], params: SamplingParams) -> None:
        params.check_vocab(self.config.vocab_size)
        if len(ids) + params.max_tokens > self.max_context:
            raise kvinfer.ContextOverflowError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = "
                f"{len(ids) + params.max_tokens} exceeds max_context={self.max_context}")

    @staticmethod
    def _as_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
        if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))):
            return [prompts]
        return list(prompts)

    def _sequences(self, prompts: list[list[int]], slots: list[int], params: SamplingParams,
                   first: int = 0) -> list[Sequence]:
        """Each sequence draws from its own stream of random numbers, a function of (seed, token
        index) only, so a prompt samples the same alone or in a batch."""
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        seqs = [Sequence(first + i, slot, ids, seed, StreamDecoder(self.tokenizer))
                for i, (ids, slot) in enumerate(zip(prompts, slots))]
        begun = 0
        try:
            for s in seqs:  # KV blocks for the whole sequence, a cached prefix where there is one
                self.engine.begin(s, s.prompt_ids, params.repetition_penalty == 1.0,
                                  reserve=min(len(s.prompt_ids) + params.max_tokens, self.max_context))
                begun += 1
        except OutOfBlocks:
            if begun == 0:
                raise
        except BaseException:
            self._end(seqs)
            raise
        return seqs[:begun]  # the pool ran short: the rest go in a later wave

    def _end(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            self.engine.end(s, s.prompt_ids + s.token_ids)

    def _check_open(self) -> None:
        if self.runner.released:
            raise ValueError("this LLM was closed")

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Seq[Prompt], params: SamplingParams | None = None) -> list[RequestOutput]:
        self._check_open()
        params = params or SamplingParams()
        items = self._as_list(prompts)
        encoded = [self._encode(p) for p in items]
        for ids in encoded:
            self._check_fits(ids, params)
        outputs: list[RequestOutput] = []
        with self.engine.lock:
            start = 0
            while start < len(encoded):
                slots = self.engine.take_slots(len(encoded) - start)
                seqs = []
                try:
                    seqs = self._sequences(encoded[start:start + len(slots)], slots, params, start)
                    self.engine.run(seqs, params)
                finally:
                    self._end(seqs)
                    self.engine.give_back(slots)
                outputs += [RequestOutput(items[s.index] if isinstance(items[s.index], str) else None,
                                          s.prompt_ids, s.text, s.token_ids, s.finish_reason) for s in seqs]
                start += len(seqs)
        return outputs

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> TextStream:
        """Text pieces as they are produced (stop strings are never emitted); the returned stream's
        `output` and `timings` fill in as it is read (see TextStream)."""
        return TextStream(self, prompt, params or SamplingParams())

    def chat(self, messages: list[dict], params: SamplingParams | None = None, tools: list[dict] | None = None,
             documents: list[dict] | None = None, **template_kwargs) -> RequestOutput:
        """The reply to a conversation, through the model's chat template rendered as transformers
        renders it (tools, documents and extra keyword arguments such as enable_thinking go to the
        template)."""
        self._check_open()
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools,
                                                    documents=documents, **template_kwargs)
        return self.generate([self.tokenizer.encode(prompt, add_special_tokens=False)], params)[0]

    def logits(self, token_ids: Seq[int], hidden_states: bool = False):
        """float32 [len, vocab]: the logits after every position of one causal pass. With
        hidden_states=True also returns the residual stream after the embedding and after each
        layer, float32 [num_layers + 1, len, hidden]."""
        self._check_open()
        ids = self._encode(token_ids)
        if len(ids) > self.max_context:
            raise ValueError(f"{len(ids)} tokens exceed max_context={self.max_context}")
        c = self.config
        out = np.empty((len(ids), c.vocab_size), np.float32)
        states = np.empty((c.num_layers + 1, len(ids), c.hidden_size), np.float32) if hidden_states else None
        step = self.runner.max_step_tokens
        slots = self.engine.take_slots(1)
        seq = Sequence(0, slots[0], ids, 0, None)
        try:
            self.engine.begin(seq, ids, reuse=False)  # every position's logits: nothing is skipped
            with self.engine.lock:
                for t0 in range(0, len(ids), step):
                    n = min(step, len(ids) - t0)
                    part = np.empty((c.num_layers + 1, n, c.hidden_size), np.float32) if hidden_states else None
                    rows = np.arange(n, dtype=np.int32)
                    self.runner.step(np.asarray(ids[t0:t0 + n], np.int32), np.array([0, n], np.int32),
                                     np.array([t0], np.int32), np.array(slots, np.int32), rows,
                                     logits=out[t0:t0 + n], hidden_states=part,
                                     block_tables=self.engine.tables([seq]))
                    seq.cached = t0 + n
                    if hidden_states:
                        states[:, t0:t0 + n] = part
        finally:
            self.engine.end(seq, ids)
            self.engine.give_back(slots)
        return (out, states) if hidden_states else out

    def close(self) -> None:
        """Frees the model's memory now (waits for a call in progress in another thread)."""
        self.runner.release()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
