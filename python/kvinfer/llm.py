"""LLM: load a model folder (or GGUF) into a Runner and generate text (vLLM-like API). generate,
stream and chat run on the continuous-batching engine loop of kvinfer.serving."""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Sequence as Seq

import numpy as np

import kvinfer
from kvinfer import _core
from kvinfer.config import attention_window, model_config, read_config_json
from kvinfer.engine import Engine, Slot
from kvinfer.models import model_name, resolve_model
from kvinfer.planner import fit_to_memory, parse_bytes, plan_for_config
from kvinfer.prompt_ids import Prompt, encode_prompt, encode_prompt_array
from kvinfer.logprobs import Logprob
from kvinfer.sampling import SamplingParams
from kvinfer.serving import Delta, ServingEngine
from kvinfer.tokenizer import Tokenizer
from kvinfer.weights import load_weights

log = logging.getLogger("kvinfer")


@dataclass
class RequestOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" (None while a stream is unfinished)
    logprobs: list[Logprob] | None = None  # one per token when SamplingParams.logprobs is set

    def add(self, d: Delta) -> None:
        self.text += d.text
        self.token_ids += d.token_ids
        if d.logprobs:
            self.logprobs = (self.logprobs or []) + d.logprobs
        if d.finish_reason:
            self.finish_reason = d.finish_reason


@dataclass
class Timings:
    prompt_tokens: int
    prompt_seconds: float = 0.0  # the prompt's prefill, up to its first token
    generated_tokens: int = 0
    decode_seconds: float = 0.0  # from the first token to the last


def _raise_for(d: Delta) -> None:
    """A request that ended with an error raises it; one aborted by close() says the LLM closed."""
    if d.finish_reason == "error":
        raise d.cause if d.cause is not None else RuntimeError(d.error)
    if d.finish_reason == "abort":
        raise ValueError("this LLM was closed")


class TextStream:
    """The continuation of one prompt as text pieces (iterate it). `output` is the RequestOutput so
    far and `timings` the prompt and decode times; close() ends the generation early and frees its
    sequence (so does dropping it). The prompt is checked, and the request queued, when the stream
    is made."""

    def __init__(self, llm: LLM, prompt: Prompt, params: SamplingParams):
        llm._check_open()
        self.params = params
        ids = llm._encode(prompt)
        llm._check_fits(ids, params)
        self.output = RequestOutput(prompt if isinstance(prompt, str) else None, ids, "", [], None)
        self.timings = Timings(len(ids))
        self._deltas: queue.SimpleQueue[Delta] = queue.SimpleQueue()
        self._serving = llm._serving_engine()
        self._start = self._first = time.perf_counter()
        self._id = self._serving.submit(ids, params, self._deltas.put)
        self._done = False

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while not self._done:
            d = self._deltas.get()
            now = time.perf_counter()
            if d.token_ids:
                if not self.output.token_ids:
                    self._first, self.timings.prompt_seconds = now, now - self._start
                self.timings.decode_seconds = now - self._first
            self._done = d.finish_reason is not None
            _raise_for(d)
            self.output.add(d)
            self.timings.generated_tokens = len(self.output.token_ids)
            if d.text:
                return d.text
        raise StopIteration

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._serving.abort(self._id)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser (the engine may be closed)
            pass


def _count(name: str, value, optional: bool = True):
    """A size argument: None (where optional) or an integer in [1, 2^31 - 1]; 0, 1.5 or True are
    errors, never defaults or truncations."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < 2**31:
        raise ValueError(f"{name}={value!r} must be an integer in [1, 2^31 - 1]")
    return int(value)


def _pick_device(device: str, config: _core.ModelConfig) -> str:
    """'auto': the GPU where this build runs steps there and its backend runs this model, else the CPU."""
    if device != "auto":
        return device
    usable = kvinfer.cuda_available() and _core.cuda_forward_available() and not _core.cuda_unsupported(config)
    return "cuda:0" if usable else "cpu"


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
    requests wait for blocks and the newest running sequence is preempted (recomputed later, with
    the same output). On CUDA a sequence's decode steps give the same bits whatever else shares
    them; `batch_invariant=False` gives that up for cuBLAS GEMMs in steps of 16 sequences and more
    and for steps that hold decodes and prompt chunks together (faster; a row's last bits then
    depend on the batch). One LLM may be used from several
    threads at once: their requests share the engine's batch."""

    def __init__(self, model: str | None = None, device: str = "auto", max_context: int | None = None,
                 max_batch: int | None = None, max_step_tokens: int = 512,
                 tracker: kvinfer.VramTracker | None = None, progress: bool = False,
                 max_memory: str | int | None = None, cuda_graphs: bool = True, prefix_caching: bool = True,
                 kv_blocks: int | None = None, batch_invariant: bool = True):
        max_context, max_batch = _count("max_context", max_context), _count("max_batch", max_batch)
        max_step_tokens = _count("max_step_tokens", max_step_tokens, optional=False)
        self.folder = resolve_model(model, progress=progress)
        hf = read_config_json(self.folder)
        self.config = model_config(hf)
        self.tokenizer = Tokenizer(self.folder)
        self.device = _pick_device(device, self.config)
        name = model_name(self.folder)
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
                              self.plan.kv_block_size, batch_invariant)
        try:
            load_weights(runner, self.config, self.folder, progress=progress)
            self.graphs = runner.capture_graphs()
            if self.graphs["batch_sizes"]:
                log.info("%s", self.graphs_summary())
        except BaseException:
            runner.release()  # the traceback keeps `runner` alive; its memory must not stay held
            raise
        self.runner = runner
        self.batch_invariant = batch_invariant
        self.engine = Engine(runner, self.tokenizer.eos_token_ids, prefix_caching)
        self._serving: ServingEngine | None = None
        self._serving_lock = threading.Lock()

    # ---- prompts -------------------------------------------------------------------------------
    def _encode(self, prompt: Prompt) -> list[int]:
        return encode_prompt(prompt, self.tokenizer, self.config.vocab_size)

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

    def _serving_engine(self) -> ServingEngine:
        """The engine loop that generate, stream and chat run on (and `kvinfer serve`), started on
        first use."""
        with self._serving_lock:
            self._check_open()
            if self._serving is None:
                # a weak reference: dropping the LLM frees its memory at once (no cycle to collect)
                self._serving = ServingEngine(weakref.proxy(self), max_waiting=None)
            return self._serving

    def graphs_summary(self) -> str | None:
        """One line on the CUDA graphs captured at load (what, how long, device memory); None when
        steps run op by op (CPU, or cuda_graphs=False)."""
        g = self.graphs
        if not g["batch_sizes"]:
            return None
        prompts = (f" and {len(g['prompt_tokens'])} prompt sizes (up to {max(g['prompt_tokens'])} tokens)"
                   if g["prompt_tokens"] else "")
        return (f"CUDA graphs for {len(g['batch_sizes'])} decode batch sizes (up to {max(g['batch_sizes'])})"
                f"{prompts} captured in {g['capture_seconds']:.2f} s, {g['device_bytes'] / 2**20:,.1f} MiB of "
                f"device memory")

    def _check_open(self) -> None:
        if self.runner.released:
            raise ValueError("this LLM was closed")

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Seq[Prompt],
                 params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        """Every prompt's continuation, in order. The prompts join the engine's continuous batch (with
        whatever other threads or a server submit), so each one's output is what it gets alone.
        `params`: one for all prompts or one per prompt. A seed applies to each prompt; without
        one, each draws its own."""
        self._check_open()
        items = self._as_list(prompts)
        every = [params or SamplingParams()] * len(items) if not isinstance(params, (list, tuple)) else list(params)
        if len(every) != len(items):
            raise ValueError(f"{len(every)} SamplingParams for {len(items)} prompts")
        packed = [encode_prompt_array(p, self.tokenizer, self.config.vocab_size) for p in items]
        encoded = [ids for ids, _ in packed]
        for ids, p in zip(encoded, every):
            self._check_fits(ids, p)
        outputs = [RequestOutput(p if isinstance(p, str) else None, ids, "", [], None) for p, ids in zip(items, encoded)]
        finished: queue.SimpleQueue[tuple[int, Delta]] = queue.SimpleQueue()

        def take(d: Delta, i: int) -> None:  # on the engine thread: this thread wakes once a request
            if d.finish_reason is None:      # (it reads outputs[i] only after request i has finished)
                outputs[i].add(d)
            else:
                finished.put((i, d))
        serving, ids, unfinished = self._serving_engine(), [], set(range(len(encoded)))
        try:
            for i, prompt_ids in enumerate(encoded):
                ids.append(serving.submit(prompt_ids, every[i], lambda d, i=i: take(d, i), prompt_array=packed[i][1]))
            while unfinished:
                i, d = finished.get()
                _raise_for(d)
                outputs[i].add(d)
                if d.finish_reason:
                    unfinished.discard(i)
        finally:
            for i in unfinished:  # an error or an interrupt: the rest stop within one step
                if i < len(ids):
                    serving.abort(ids[i])
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
        seq = Slot(slots[0])
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
        """Frees the model's memory now: unfinished generations end (their callers get ValueError)
        and a call in progress in another thread is waited for."""
        with self._serving_lock:
            serving, self._serving = self._serving, None
            if serving is not None:
                serving.close()
            self.runner.release()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
