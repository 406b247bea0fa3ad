"""The serving engine: one background thread runs the scheduler's steps on an LLM's runner while
any number of threads (LLM.generate/stream, an asyncio server) submit requests and receive their
output as deltas. Submission, abort and close are thread-safe.

Steps run two in flight: step n + 1 is scheduled and enqueued before step n's sampled tokens are
read, a decoding sequence's input taken on the device from step n's sample, so the GPU never waits
for this thread. Stops are seen one step late and a finished sequence's extra token is dropped.
The runner's lock is held while steps are in flight (another user's step would collect ours) and
let go every PIPELINE_RUN steps. A step with a row that wants log-probabilities runs alone (its
logits come back to the host)."""

from __future__ import annotations

import atexit
import itertools
import queue
import random
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from kvinfer.block_manager import OutOfBlocks
from kvinfer.logprobs import Logprob, logprob_of
from kvinfer.sampling import SamplingParams
from kvinfer.scheduler import Request, Running, Scheduler, request_of
from kvinfer.step_inputs import StepInputs, step_inputs, write_sampling_row


class QueueFullError(RuntimeError):
    """The waiting queue holds max_waiting requests already."""


class EngineStoppedError(ValueError):
    """The engine was closed (or its process ended, or stopped answering): nothing can be submitted."""


@dataclass(slots=True)
class Delta:
    """What one request got from one step: new text and token ids (and their log-probabilities when
    asked); `finish_reason` ("stop", "length", "abort" or "error") on its last delta, with `error`
    (and the exception, `cause`) set for "error"."""
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[Logprob] | None = None
    cause: BaseException | None = field(default=None, repr=False)


Deliver = Callable[[Delta], None]
_engines: weakref.WeakSet[ServingEngine] = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """At exit every engine thread ends first: one killed inside a native call would abort the process."""
    for engine in list(_engines):
        engine.close()


class ServingEngine:
    PIPELINE_RUN = 64  # steps in flight back to back before the runner's lock is let go
    IDLE_LINGER_S = 2.0  # an idle engine thread's wait for more work before it ends

    def __init__(self, llm, max_waiting: int | None = 1024, max_prefill_while_decoding: int | None = None):
        """max_prefill_while_decoding: prompt tokens of a step while sequences decode (Scheduler).
        Decodes and prompt chunks share steps (Scheduler mixed_steps) where the LLM gave up batch
        invariance: a decode row's last bits then depend on its step anyway."""
        if max_waiting is not None and max_waiting < 1:
            raise ValueError(f"max_waiting={max_waiting} must be >= 1 (or None: no bound)")
        self.llm, self.max_waiting = llm, max_waiting
        engine = llm.engine
        self.scheduler = Scheduler(
            llm.runner.max_step_tokens, llm.max_context, engine.try_take_slot, lambda slot: engine.give_back([slot]),
            llm.tokenizer,
            begin=self._begin,
            end=lambda seq: engine.end(seq, seq.request.prompt_ids + seq.token_ids),
            prefix_block=engine.blocks.block_size if engine.prefix_caching else 0,
            max_prefill_while_decoding=max_prefill_while_decoding, mixed_steps=not llm.batch_invariant)
        self._deliver: dict[str, Deliver] = {}
        self._inbox: list[tuple[Request, Deliver]] = []
        self._aborts: list[str] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._in_flight: deque[StepInputs] = deque()  # steps enqueued, oldest first
        self._pipelined = 0                             # steps since the lock was let go
        self._ids = itertools.count()
        self.steps = 0
        self._thread: threading.Thread | None = None  # runs while there is work (see _loop)
        _engines.add(self)

    # ---- any thread --------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, deliver: Deliver,
               request_id: str | None = None, prompt_array=None) -> str:
        """Queues a request; `deliver` is called from the engine thread with each Delta.
        `prompt_array`: the same ids as int32 where the caller has them (else made here, on the
        caller's thread, not the engine's); the request takes it over (it becomes read-only) and
        its values must be prompt_ids' (the prefix cache hashes those)."""
        request_id = request_id or f"req-{next(self._ids)}"
        stop_ids = (frozenset() if params.ignore_eos else frozenset(self.llm.tokenizer.eos_token_ids)) \
            | frozenset(params.stop_token_ids)
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        params.check_vocab(self.llm.config.vocab_size)  # a bad id must fail this request, not the step
        request = Request(request_id, list(prompt_ids), params, seed, stop_ids, prompt_array)
        self.scheduler.check_fits(request)  # here, so that the caller gets the error
        with self._cv:
            if self._stopping:
                raise EngineStoppedError("this serving engine was closed")
            if self.max_waiting is not None and len(self.scheduler.waiting) + len(self._inbox) >= self.max_waiting:
                raise QueueFullError(f"{self.max_waiting} requests are waiting already")
            self._inbox.append((request, deliver))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="kvinfer-engine", daemon=True)
                self._thread.start()
            self._cv.notify()
        return request_id

    def abort(self, request_id: str) -> None:
        """Ends a request within one step (its last delta says "abort"); unknown ids are ignored."""
        with self._cv:
            if self._thread is not None:  # else nothing is queued or running: nothing to abort
                self._aborts.append(request_id)
                self._cv.notify()

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """The deltas of one request, for a caller that waits on them (closing the iterator aborts)."""
        q: queue.Queue[Delta] = queue.Queue()
        request_id = self.submit(prompt_ids, params, q.put)
        try:
            while True:
                d = q.get()
                yield d
                if d.finish_reason:
                    return
        finally:
            self.abort(request_id)

    def stats(self) -> dict:
        blocks = self.llm.engine.blocks
        with self._cv:
            return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting) + len(self._inbox),
                    "slots_used": self.llm.max_batch - self.llm.engine.free_slots(),
                    "steps": self.steps, "kv_blocks": blocks.num_blocks, "kv_blocks_used": blocks.used_blocks(),
                    "prefix_hit_tokens": blocks.hit_tokens, "prefix_query_tokens": blocks.query_tokens,
                    "preemptions": self.scheduler.preemptions}

    @property
    def closed(self) -> bool:
        return self._stopping

    def close(self) -> None:
        """Stops the thread; requests still running end with finish_reason "abort"."""
        with self._cv:
            self._stopping = True
            thread = self._thread
            self._cv.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ---- the engine thread -----------------------------------------------------------------------
    def _admissible(self) -> bool:
        """A waiting request could start now: a slot is free and the pool holds its prompt."""
        waiting = self.scheduler.waiting
        if not waiting or not self.llm.engine.free_slots():
            return False
        head = waiting[0]
        blocks = self.llm.engine.blocks
        return blocks.free_blocks() >= blocks.blocks_for(len(head.prefill_ids() if isinstance(head, Running)
                                                             else head.prompt_ids))

    def _begin(self, seq: Running) -> None:
        """KV blocks for an admitted sequence: a fork of a running sequence with the same prompt
        (n > 1 choices), else the prefix cache's and fresh ones."""
        engine, request = self.llm.engine, seq.request
        reuse = engine.prefix_caching and not request.params.reads_history
        parent = None
        if reuse and not seq.token_ids:
            n = len(request.prompt_ids)
            parent = next((p for p in self.scheduler.running
                           if p.table is not None and p.cached >= n - 1 and not p.request.params.reads_history
                           and len(p.request.prompt_ids) == n and p.request.prompt_ids == request.prompt_ids), None)
        if parent is not None:
            engine.fork(seq, parent, len(request.prompt_ids))
        else:
            engine.begin(seq, seq.prefill_ids(), reuse)
        write_sampling_row(engine.sampling_rows, seq.slot, request)

    def _room(self) -> list[Running] | None:
        """Blocks for each decoding sequence's next token: the decoding sequences, or None when the
        pool is short."""
        decoding = self.scheduler.decoding()
        try:
            for s in decoding:
                self.llm.engine.grow(s, s.cached + 1)
            return decoding
        except OutOfBlocks:
            return None

    def _loop(self) -> None:
        idle_since = None
        while True:
            with self._cv:
                while not (self._stopping or self._inbox or self._aborts or self.scheduler.running
                           or self._in_flight or self._admissible()):
                    if self.scheduler.waiting:  # no free slot or blocks (another user holds them): look again soon
                        self._cv.wait(timeout=0.05)
                        continue
                    # idle: the thread waits a while for more work (back-to-back calls share one thread
                    # instead of paying a thread start each), then ends (submit starts another), so an
                    # idle engine keeps no thread
                    now = time.monotonic()
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= self.IDLE_LINGER_S:
                        self._thread = None
                        return
                    self._cv.wait(timeout=self.IDLE_LINGER_S - (now - idle_since))
                idle_since = None
                if self._stopping:
                    break
                work = (self._inbox, self._aborts)
                self._inbox, self._aborts = [], []
            self._admit(*work)
            work = None  # nothing of a request stays referenced from here while the thread idles
            try:
                self._step()
            except Exception as e:  # the runner failed (or was closed): every request ends
                self._fail(e)
        try:
            self._drain()
        except Exception as e:
            self._fail(e)
        for seq in list(self.scheduler.running):
            self.scheduler.finish(seq)
            self._end(seq.request, "abort", seq=seq)
        for item in self.scheduler.waiting:
            self._end(request_of(item), "abort", seq=item if isinstance(item, Running) else None)
        with self._cv:  # submitted before the stop but never picked up: they end too (submit refuses from here)
            inbox, self._inbox = self._inbox, []
        for request, deliver in inbox:
            self._deliver[request.request_id] = deliver
            self._end(request, "abort")

    def _admit(self, inbox: list[tuple[Request, Deliver]], aborts: list[str]) -> None:
        for request, deliver in inbox:
            self._deliver[request.request_id] = deliver
            self.scheduler.add(request)
        for request_id in aborts:
            dropped = self.scheduler.abort(request_id)  # its rows in flight are dropped when collected
            if isinstance(dropped, Request):
                self._end(dropped, "abort")
            elif dropped is not None:
                self._end(dropped.request, "abort", seq=dropped)

    def _step(self) -> None:
        """Enqueues the next step, then collects the older one in flight (or the last, when there is
        nothing to enqueue)."""
        if self._pipelined >= self.PIPELINE_RUN:
            self._drain()  # the lock is let go: another user of the runner may step
            self._pipelined = 0
            return
        while (decoding := self._room()) is None:  # the pool is short: steps in flight end first
            if self._in_flight:  # (finishing sequences free blocks), then the newest sequences are preempted
                self._collect()
                return
            self.scheduler.preempt(self.scheduler.running[-1])  # one always fits: the pool holds a context
        step = self.scheduler.schedule(decoding)
        engine = self.llm.engine
        for c in step.chunks:  # a decoding sequence may enter a new block
            engine.grow(c.seq, c.seq.cached + c.num_tokens)
        if step.chunks:
            if any(c.samples and c.seq.request.params.logprobs is not None for c in step.chunks):
                self._drain()
                self._run_with_logits(step_inputs(step.chunks, None, engine))
                return
            self._launch(step_inputs(step.chunks, self._in_flight[-1].sampled if self._in_flight else None, engine))
        if self._in_flight and (len(self._in_flight) == 2 or not step.chunks):
            self._collect()

    def _advance(self, inputs: StepInputs) -> None:
        """The step's tokens are enqueued: cached lengths and sampler steps move on, and the computed
        blocks of prompts serve requests that start the same way."""
        engine = self.llm.engine
        lengths = np.diff(inputs.query_starts).tolist()
        for seq, n in zip(inputs.seqs, lengths):
            prefill = seq.prefilling
            seq.cached += n
            if prefill:
                engine.blocks.register(seq.table, seq.prefill_ids(), seq.cached)
        for seq in inputs.sampled:
            seq.launched += 1

    def _launch(self, inputs: StepInputs) -> None:
        lock = self.llm.engine.lock
        if not self._in_flight:
            lock.acquire()
        try:
            self.llm.runner.launch(**inputs.kwargs())
        except BaseException:
            if not self._in_flight:
                lock.release()
            raise
        self._advance(inputs)
        self._in_flight.append(inputs)
        self._pipelined += 1

    def _collect(self) -> None:
        inputs = self._in_flight.popleft()
        try:
            tokens = self.llm.runner.collect().tolist()
        finally:
            if not self._in_flight:
                self.llm.engine.lock.release()
        self.steps += 1
        for seq, token in zip(inputs.sampled, tokens):
            if seq.finish_reason is None:  # else it finished or was aborted after this step was enqueued
                self._take(seq, token)

    def _run_with_logits(self, inputs: StepInputs) -> None:
        """A step run at once (nothing in flight), its sampled rows' logits copied to the host for the
        rows that want log-probabilities."""
        logits = np.empty((len(inputs.sampled), self.llm.config.vocab_size), np.float32)
        with self.llm.engine.lock:
            tokens = self.llm.runner.step(**inputs.kwargs(), logits=logits).tolist()
        self._advance(inputs)
        self.steps += 1
        for row, (seq, token) in enumerate(zip(inputs.sampled, tokens)):
            top = seq.request.params.logprobs
            self._take(seq, token, None if top is None else logprob_of(logits[row], token, top))

    def _drain(self) -> None:
        while self._in_flight:
            self._collect()

    def _fail(self, error: Exception) -> None:
        while self._in_flight:  # what is still enqueued is dropped, and the lock let go
            self._in_flight.popleft()
            if not self._in_flight:
                self.llm.engine.lock.release()
        for seq in list(self.scheduler.running):
            self.scheduler.finish(seq)
            self._end(seq.request, "error", error, seq)
        while self.scheduler.waiting:
            item = self.scheduler.waiting.popleft()
            self._end(request_of(item), "error", error, item if isinstance(item, Running) else None)

    def _take(self, seq: Running, token: int, logprob: Logprob | None = None) -> None:
        seq.accept(token)
        lp = None if logprob is None else [logprob]
        if seq.finish_reason:
            self.scheduler.finish(seq)
            self._end(seq.request, seq.finish_reason, seq=seq, new=[token], logprobs=lp)
        else:
            rid = seq.request.request_id
            self._emit(self._deliver[rid], Delta(rid, seq.new_text(), [token], None, len(seq.request.prompt_ids),
                                                 len(seq.token_ids), logprobs=lp))

    def _emit(self, deliver: Deliver, delta: Delta) -> None:
        """A receiver that fails (its event loop closed, say) loses its request, not the engine."""
        try:
            deliver(delta)
        except Exception:
            if delta.finish_reason is None:
                self.abort(delta.request_id)

    def _end(self, request: Request, reason: str, error: Exception | None = None, seq: Running | None = None,
             new: list[int] | None = None, logprobs: list[Logprob] | None = None) -> None:
        deliver = self._deliver.pop(request.request_id, None)
        if deliver is None:
            return
        if seq is not None and seq.finish_reason is None:
            seq.finish_reason = reason
        text = seq.new_text() if seq is not None else ""
        self._emit(deliver, Delta(request.request_id, text, new or [], reason, len(request.prompt_ids),
                                  len(seq.token_ids) if seq is not None else 0,
                                  None if error is None else str(error), logprobs, error))
