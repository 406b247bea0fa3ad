"""The serving engine: one background thread runs the scheduler's steps on an LLM's runner while
any number of threads (or an asyncio server) submit requests and receive their output as deltas.
Submission, abort and close are thread-safe; each step takes the runner's lock, so the LLM's own
generate/stream calls still work beside it, sharing its sequence slots."""

from __future__ import annotations

import itertools
import queue
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from kvinfer.engine import SAMPLING_DTYPE, logit_biases
from kvinfer.sampling import SamplingParams
from kvinfer.block_manager import OutOfBlocks
from kvinfer.scheduler import Request, Running, ScheduledStep, Scheduler, request_of


class QueueFullError(RuntimeError):
    """The waiting queue holds max_waiting requests already."""


@dataclass
class Delta:
    """What one request got from one step: new text and token ids; `finish_reason` ("stop",
    "length", "abort" or "error") on its last delta, with `error` set for "error"."""
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


Deliver = Callable[[Delta], None]


class ServingEngine:
    def __init__(self, llm, max_waiting: int = 1024):
        if max_waiting < 1:
            raise ValueError(f"max_waiting={max_waiting} must be >= 1")
        self.llm, self.max_waiting = llm, max_waiting
        engine = llm.engine
        self.scheduler = Scheduler(
            llm.runner.max_step_tokens, llm.max_context, self._take_slot, lambda slot: engine.give_back([slot]),
            llm.tokenizer,
            begin=lambda seq: engine.begin(seq, seq.prefill_ids(), seq.request.params.repetition_penalty == 1.0),
            end=lambda seq: engine.end(seq, seq.request.prompt_ids + seq.token_ids),
            prefix_block=engine.blocks.block_size if engine.prefix_caching else 0)
        self._deliver: dict[str, Deliver] = {}
        self._inbox: list[tuple[Request, Deliver]] = []
        self._aborts: list[str] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._in_flight: deque[list[Running]] = deque()  # decode steps enqueued, oldest first
        self._pipelined = 0                                 # decode steps since the lock was let go
        self._ids = itertools.count()
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="kvinfer-engine", daemon=True)
        self._thread.start()

    # ---- any thread --------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, deliver: Deliver,
               request_id: str | None = None) -> str:
        """Queues a request; `deliver` is called from the engine thread with each Delta."""
        request_id = request_id or f"req-{next(self._ids)}"
        stop_ids = (frozenset() if params.ignore_eos else frozenset(self.llm.tokenizer.eos_token_ids)) \
            | frozenset(params.stop_token_ids)
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        params.check_vocab(self.llm.config.vocab_size)  # a bad id must fail this request, not the step
        request = Request(request_id, list(prompt_ids), params, seed, stop_ids)
        self.scheduler.check_fits(request)  # here, so that the caller gets the error
        with self._cv:
            if self._stopping:
                raise ValueError("this serving engine was closed")
            if len(self.scheduler.waiting) + len(self._inbox) >= self.max_waiting:
                raise QueueFullError(f"{self.max_waiting} requests are waiting already")
            self._inbox.append((request, deliver))
            self._cv.notify()
        return request_id

    def abort(self, request_id: str) -> None:
        """Ends a request within one step (its last delta says "abort"); unknown ids are ignored."""
        with self._cv:
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
                    "steps": self.steps, "kv_blocks": blocks.num_blocks, "kv_blocks_used": blocks.used_blocks(),
                    "prefix_hit_tokens": blocks.hit_tokens, "prefix_query_tokens": blocks.query_tokens,
                    "preemptions": self.scheduler.preemptions}

    def close(self) -> None:
        """Stops the thread; requests still running end with finish_reason "abort"."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

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

    def _room(self, rows: list[Running]) -> bool:
        """Blocks for each row's next token; False when the pool is short."""
        try:
            for s in rows:
                self.llm.engine.grow(s, s.cached + 1)
            return True
        except OutOfBlocks:
            return False

    def _make_room(self) -> None:
        """Every decoding sequence gets the block its next token needs, the newest sequences
        preempted while the pool is short (nothing may be in flight). One sequence always fits:
        the pool holds at least a full context."""
        while self.scheduler.running and not self._room([s for s in self.scheduler.running if not s.prefilling]):
            self.scheduler.preempt(self.scheduler.running[-1])

    def _take_slot(self) -> int | None:
        engine = self.llm.engine
        with engine.lock:
            return engine.take_slots(1)[0] if engine.free_slots() else None

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._inbox or self._aborts or self.scheduler.running
                           or self._in_flight or self._admissible()):
                    # waiting requests and no free slot or blocks (LLM.stream holds them): look again soon
                    self._cv.wait(timeout=0.05 if self.scheduler.waiting else None)
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
            for request, deliver in inbox:
                self._deliver[request.request_id] = deliver
                self.scheduler.add(request)
            for request_id in aborts:
                dropped = self.scheduler.abort(request_id)  # its steps in flight are dropped when collected
                if isinstance(dropped, Request):
                    self._end(dropped, "abort")
                elif dropped is not None:
                    self._end(dropped.request, "abort", seq=dropped)
            try:
                if self.scheduler.decode_only(self._admissible()) and self._pipelined < self.PIPELINE_RUN:
                    self._decode_pipelined()
                else:
                    self._drain()
                    self._pipelined = 0  # the lock was let go: another user of the runner may step
                    self._make_room()
                    step = self.scheduler.schedule()
                    if step.chunks:
                        self._run(step)
            except Exception as e:  # the runner failed (or was closed): every request ends
                self._fail(str(e))
        try:
            self._drain()
        except Exception as e:
            self._fail(str(e))
        for seq in list(self.scheduler.running):
            self.scheduler.finish(seq)
            self._end(seq.request, "abort", seq=seq)
        for item in self.scheduler.waiting:
            self._end(request_of(item), "abort", seq=item if isinstance(item, Running) else None)

    # Decode steps run two in flight: step n + 1 is enqueued, its input tokens taken on the device
    # from step n's samples, before step n's tokens are read, so the GPU never waits for this
    # thread. Stops are seen one step late; a finished sequence's extra token is dropped. The
    # runner's lock is held while steps are in flight (a step of another user would collect
    # ours), and let go after PIPELINE_RUN steps so that other users get their turn.
    PIPELINE_RUN = 64

    def _decode_pipelined(self) -> None:
        rows = [s for s in self.scheduler.running if s.launched < s.request.params.max_tokens]
        if rows and len(self._in_flight) < 2 and not self._room(rows):  # the pool is short
            if self._in_flight:
                self._drain()  # the steps in flight end first, then sequences can be preempted
            else:
                self._make_room()
            return
        if rows and len(self._in_flight) < 2:
            if not self._in_flight:
                self.llm.engine.lock.acquire()
            try:
                self._launch(rows, self._in_flight[-1] if self._in_flight else None)
            except BaseException:
                if not self._in_flight:
                    self.llm.engine.lock.release()
                raise
            self._in_flight.append(rows)
            self._pipelined += 1
            if len(self._in_flight) < 2:
                return
        if self._in_flight:
            self._collect()

    def _launch(self, rows: list[Running], prev: list[Running] | None) -> None:
        n = len(rows)
        prev_row = {id(s): r for r, s in enumerate(prev)} if prev else {}
        from_prev = np.array([prev_row.get(id(s), -1) for s in rows], np.int32)
        tokens = np.array([s.token_ids[-1] if f < 0 else 0 for s, f in zip(rows, from_prev)], np.int32)
        steps = np.arange(n + 1, dtype=np.int32)
        engine = self.llm.engine
        for s in rows:
            engine.grow(s, s.cached + 1)
        args, biases = self._sampling(rows)
        self.llm.runner.launch(tokens, steps, np.array([s.cached for s in rows], np.int32),
                               np.array([s.slot for s in rows], np.int32), steps[:n], args,
                               from_prev if prev_row else None, engine.tables(rows), biases)
        for s in rows:
            s.cached += 1
            s.launched += 1

    def _collect(self) -> None:
        rows = self._in_flight.popleft()
        try:
            tokens = self.llm.runner.collect().tolist()
        finally:
            if not self._in_flight:
                self.llm.engine.lock.release()
        self.steps += 1
        for seq, token in zip(rows, tokens):
            if seq.finish_reason is None:  # else it finished or was aborted after this step was enqueued
                self._take(seq, token)

    def _drain(self) -> None:
        while self._in_flight:
            self._collect()

    def _fail(self, error: str) -> None:
        while self._in_flight:  # what is still enqueued is collected, or the lock is let go
            self._in_flight.popleft()
            if not self._in_flight:
                self.llm.engine.lock.release()
        for seq in list(self.scheduler.running):
            self.scheduler.finish(seq)
            self._end(seq.request, "error", error, seq)
        while self.scheduler.waiting:
            item = self.scheduler.waiting.popleft()
            self._end(request_of(item), "error", error, item if isinstance(item, Running) else None)

    @staticmethod
    def _sampling(seqs: list[Running]) -> tuple[np.ndarray, np.ndarray | None]:
        """Each row's sampling arguments, and the step's logit biases (None: no row has any)."""
        args = np.zeros(len(seqs), SAMPLING_DTYPE)
        entries = []
        for row, seq in enumerate(seqs):
            p = seq.request.params
            args[row] = (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, seq.request.seed,
                         seq.launched, 0, 0)
            entries.append(p.biases(seq.request.stop_ids, seq.launched) if p.logit_bias or p.min_tokens else [])
        return args, logit_biases(args, entries)

    def _run(self, step: ScheduledStep) -> None:
        """A step with prompt chunks, run at once (nothing in flight)."""
        chunks = step.chunks
        tokens = np.concatenate([np.asarray(c.tokens, np.int32) for c in chunks])
        starts = np.cumsum([0] + [len(c.tokens) for c in chunks]).astype(np.int32)
        sampled = [i for i, c in enumerate(chunks) if c.samples]
        args, biases = self._sampling([chunks[i].seq for i in sampled])
        engine = self.llm.engine
        with engine.lock:
            for c in chunks:  # a decoding sequence may enter a new block
                engine.grow(c.seq, c.seq.cached + len(c.tokens))
            out = self.llm.runner.step(tokens, starts, np.array([c.seq.cached for c in chunks], np.int32),
                                       np.array([c.seq.slot for c in chunks], np.int32),
                                       (starts[1:] - 1)[sampled].astype(np.int32), args,
                                       block_tables=engine.tables([c.seq for c in chunks]), logit_bias=biases)
        self.steps += 1
        for c in chunks:
            prefill = c.seq.prefilling
            c.seq.cached += len(c.tokens)
            if prefill:  # the prompt's computed blocks serve requests that start the same way
                engine.blocks.register(c.seq.table, c.seq.prefill_ids(), c.seq.cached)
        for i, token in zip(sampled, out.tolist()):
            chunks[i].seq.launched += 1
            self._take(chunks[i].seq, token)

    def _take(self, seq: Running, token: int) -> None:
        seq.accept(token)
        if seq.finish_reason:
            self.scheduler.finish(seq)
            self._end(seq.request, seq.finish_reason, seq=seq, new=[token])
        else:
            self._send(seq, [token])

    def _send(self, seq: Running, new: list[int]) -> None:
        rid = seq.request.request_id
        self._emit(self._deliver[rid], Delta(rid, seq.new_text(), new, None, len(seq.request.prompt_ids),
                                             len(seq.token_ids)))

    def _emit(self, deliver: Deliver, delta: Delta) -> None:
        """A receiver that fails (its event loop closed, say) loses its request, not the engine."""
        try:
            deliver(delta)
        except Exception:
            if delta.finish_reason is None:
                self.abort(delta.request_id)

    def _end(self, request: Request, reason: str, error: str | None = None, seq: Running | None = None,
             new: list[int] | None = None) -> None:
        deliver = self._deliver.pop(request.request_id, None)
        if deliver is None:
            return
        if seq is not None and seq.finish_reason is None:
            seq.finish_reason = reason
        text = seq.new_text() if seq is not None else ""
        self._emit(deliver, Delta(request.request_id, text, new or [], reason, len(request.prompt_ids),
                                  len(seq.token_ids) if seq is not None else 0, error))
