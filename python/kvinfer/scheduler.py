"""Continuous batching: requests wait in a queue; a step takes each running sequence's next token, or
chunks of prompts up to the step's token budget (chunked prefill), the two kinds taking turns. A
request is admitted as soon as a sequence slot is free and leaves its slot the step it finishes or
is aborted, so a waiting one starts on the next step; nothing waits for a wave to end. An admitted request's prompt
gets KV blocks at once, the prefix cache's where its prompt starts like an earlier one (only the
rest is prefilled); a finished one's blocks are freed at once. When the pool runs short, the newest
running sequence is preempted: its blocks and slot are freed and it waits at the head of the queue,
to recompute its prompt and tokens so far when it is admitted again (its output so far is kept)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kvinfer import ContextOverflowError
from kvinfer.block_manager import OutOfBlocks
from kvinfer.engine import accept_token
from kvinfer.sampling import SamplingParams
from kvinfer.tokenizer import StreamDecoder


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int                      # the sampler's stream: a function of (seed, token index) only
    stop_ids: frozenset[int]       # end-of-sequence ids (unless ignore_eos) and params.stop_token_ids
    # [prompt_len] int32, the same ids (read-only): prompt chunks are slices of it
    prompt_array: np.ndarray | None = field(default=None, compare=False, repr=False)
    prompt_len: int = field(init=False)
    hold: int = field(init=False)  # characters of new text held back: they could still start a stop string

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError(f"request {self.request_id!r} has an empty prompt")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"request {self.request_id!r} seed={self.seed} must be in [0, 2^64)")
        self.prompt_len = len(self.prompt_ids)
        if self.prompt_array is None:
            self.prompt_array = np.fromiter(self.prompt_ids, np.int32, count=self.prompt_len)
        elif self.prompt_array.shape != (self.prompt_len,) or self.prompt_array.dtype != np.int32:
            raise ValueError(f"request {self.request_id!r}: prompt_array {self.prompt_array.dtype}"
                             f"{list(self.prompt_array.shape)} must be int32[{self.prompt_len}]")
        self.prompt_array.setflags(write=False)  # steps read it; the prefix cache hashes prompt_ids
        self.hold = max((len(s) for s in self.params.stop), default=1) - 1


@dataclass
class Running:
    """A request's sequence while it holds a slot: its cached length is tracked here, never guessed."""
    request: Request
    slot: int
    decoder: StreamDecoder
    table: object = None           # its KV blocks (block_manager.BlockTable), set by `begin`
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0               # characters of `text` already handed out (a stop may be half-written)
    stop_from: int = 0             # stop strings are looked for from here (min_tokens)
    cached: int = 0                # tokens whose K/V are in the cache (or enqueued to be)
    launched: int = 0              # tokens sampled (or enqueued to be): the sampler's step index
    finish_reason: str | None = None

    def prefill_ids(self) -> list[int]:
        """Tokens whose K/V precede decoding: the prompt, and after a preemption the tokens
        generated so far but the last (the next decode step's input)."""
        return self.request.prompt_ids + self.token_ids[:-1]

    def prefill_array(self) -> np.ndarray:
        """prefill_ids() as int32 (a step's input): the request's array itself unless preempted."""
        if len(self.token_ids) < 2:
            return self.request.prompt_array
        return np.concatenate([self.request.prompt_array, np.array(self.token_ids[:-1], np.int32)])

    @property
    def prefilling(self) -> bool:
        n = len(self.token_ids)
        return self.cached < self.request.prompt_len + (n - 1 if n else 0)

    def accept(self, token: int) -> None:
        accept_token(self, token, self.request.params, self.request.stop_ids)

    def new_text(self) -> str:
        """Text not handed out yet, holding back what could still become a stop string."""
        end = max(self.emitted, len(self.text) - (0 if self.finish_reason else self.request.hold))
        piece, self.emitted = self.text[self.emitted:end], end
        return piece


@dataclass
class Chunk:
    seq: Running
    tokens: np.ndarray | None      # prompt tokens (int32); None: one decode token, the sequence's latest
    samples: bool                  # whether this chunk's last row is sampled

    @property
    def num_tokens(self) -> int:
        return 1 if self.tokens is None else len(self.tokens)


@dataclass
class ScheduledStep:
    chunks: list[Chunk]

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    """Which tokens run in the next step. Slots come from `take_slot` (None when none is free) and
    go back through `give_slot`, so the pool can be shared with other users of the runner;
    `begin(seq)` gives an admitted sequence its KV blocks (and sets seq.cached to the prefix found
    cached), `end(seq)` frees them."""

    def __init__(self, max_step_tokens: int, max_context: int, take_slot, give_slot, tokenizer,
                 begin=lambda seq: None, end=lambda seq: None, prefix_block: int = 0,
                 max_prefill_while_decoding: int | None = None, mixed_steps: bool = False):
        """prefix_block > 0 (the KV block size, with prefix caching): a request whose first block
        of tokens is that of a sequence still prefilling waits until that prefill is done, then
        finds the shared blocks cached instead of computing them a second time.
        max_prefill_while_decoding: prompt tokens a step takes while sequences are decoding (None:
        max_step_tokens, or half of it with mixed_steps). A prompt step sits between two tokens of
        every decoding sequence, so a smaller one keeps the time between a stream's tokens near a
        decode step's, and a long prompt takes more steps to its first token.
        mixed_steps: every step takes each decoding sequence's token and prompt chunks in the
        budget left (decodes no longer wait for prompt steps; a decode row's output then depends
        on the prompts beside it, in its last bits). Every mixed step is then a time between two
        tokens, so by default it takes half the budget of prompt tokens, not all of it."""
        if max_step_tokens < 1:
            raise ValueError(f"max_step_tokens={max_step_tokens} must be >= 1")
        if max_prefill_while_decoding is not None and max_prefill_while_decoding < 1:
            raise ValueError(f"max_prefill_while_decoding={max_prefill_while_decoding} must be >= 1 (or None)")
        self.max_step_tokens, self.max_context, self.prefix_block = max_step_tokens, max_context, prefix_block
        default = max(1, max_step_tokens // 2) if mixed_steps else max_step_tokens
        self.max_prefill_while_decoding = min(max_prefill_while_decoding or default, max_step_tokens)
        self._take_slot, self._give_slot, self._tokenizer = take_slot, give_slot, tokenizer
        self._begin, self._end = begin, end
        self.waiting: deque[Request | Running] = deque()  # Running: preempted, admitted first
        self.running: list[Running] = []
        self.preemptions = 0
        self._prefill_turn = False  # the next step is a prompt step if there are prompt chunks
        self.mixed_steps = mixed_steps

    def check_fits(self, request: Request) -> None:
        """ContextOverflowError unless the prompt and max_tokens fit a sequence's context."""
        total = len(request.prompt_ids) + request.params.max_tokens
        if total > self.max_context:
            raise ContextOverflowError(f"prompt ({len(request.prompt_ids)} tokens) + max_tokens "
                                       f"({request.params.max_tokens}) = {total} exceeds max_context={self.max_context}")

    def add(self, request: Request) -> None:
        self.check_fits(request)
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def decoding(self) -> list[Running]:
        """Running sequences past their prompt that need another token (their last one may still
        be in flight: its step has not been collected)."""
        return [s for s in self.running if not s.prefilling and s.launched < s.request.params.max_tokens]

    def schedule(self, decoding: list[Running] | None = None) -> ScheduledStep:
        """A step of decodes (one token for every sequence past its prompt, oldest first) or one of
        prompt chunks (running sequences' first, then newly admitted requests', within the token
        budget); while both have work they take turns. Never both in one step: a decode row then
        runs through the very kernels it meets alone, so its output cannot depend on the prompts
        beside it (and a decode step can replay a CUDA graph). With mixed_steps, one step holds
        both: the decodes, then prompt chunks in the rest of the budget. `decoding`: what
        self.decoding() gives now, where the caller has it already."""
        decodes = [Chunk(s, None, True) for s in (self.decoding() if decoding is None else decoding)[:self.max_step_tokens]]
        if self.mixed_steps:
            budget = self.max_step_tokens - len(decodes)
            if decodes:
                budget = min(budget, self.max_prefill_while_decoding)
            return ScheduledStep(decodes + self._prefill_step(budget).chunks)
        if decodes and not self._prefill_turn:
            self._prefill_turn = True
            return ScheduledStep(decodes)
        step = self._prefill_step(self.max_prefill_while_decoding if decodes else self.max_step_tokens)
        self._prefill_turn = not step.chunks  # nothing to prefill: decode again next time
        return step if step.chunks or not decodes else ScheduledStep(decodes)

    def _prefill_step(self, budget: int) -> ScheduledStep:
        chunks = []
        for seq in self.running:
            if seq.prefilling and budget > 0:
                chunks.append(self._prompt_chunk(seq, budget))
                budget -= len(chunks[-1].tokens)
        while self.waiting and budget > 0:
            slot = self._take_slot()
            if slot is None:
                break
            head = self.waiting[0]
            if self._shares_a_prefill(head):
                self._give_slot(slot)
                break
            seq = head if isinstance(head, Running) else Running(head, slot, StreamDecoder(self._tokenizer))
            seq.slot = slot
            try:
                self._begin(seq)
            except OutOfBlocks:  # it waits for blocks: running sequences free theirs as they end
                self._give_slot(slot)
                break
            except BaseException:
                self._give_slot(slot)
                raise
            self.waiting.popleft()
            self.running.append(seq)
            chunks.append(self._prompt_chunk(seq, budget))
            budget -= len(chunks[-1].tokens)
        return ScheduledStep(chunks)

    def _shares_a_prefill(self, item: Request | Running) -> bool:
        bs, request = self.prefix_block, request_of(item)
        if bs == 0 or request.params.reads_history:
            return False  # no reuse
        prompt, head = request.prompt_ids, request.prompt_ids[:bs]
        return any(s.prefilling and (s.request.prompt_ids == prompt or  # a fork of it, once prefilled
                                     (len(prompt) > bs and s.request.prompt_ids[:bs] == head))
                   for s in self.running)

    @staticmethod
    def _prompt_chunk(seq: Running, budget: int) -> Chunk:
        """The next piece of the prompt; its last row is sampled where the prompt ends (a preempted
        sequence's next token is known: it is not sampled again)."""
        prompt = seq.prefill_array()
        n = min(len(prompt) - seq.cached, budget)
        return Chunk(seq, prompt[seq.cached:seq.cached + n], seq.cached + n == len(prompt) and not seq.token_ids)

    def preempt(self, seq: Running) -> None:
        """Frees a running sequence's blocks and slot; it waits first in line, and recomputes its
        K/V when admitted again (nothing of it may be in flight)."""
        self.finish(seq)
        seq.cached, seq.table = 0, None
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def finish(self, seq: Running) -> None:
        """The sequence leaves the batch; its blocks and slot are free for the next step."""
        self.running.remove(seq)
        try:
            self._end(seq)
        finally:
            self._give_slot(seq.slot)

    def abort(self, request_id: str) -> Running | Request | None:
        """Drops a request wherever it is; returns what was dropped (None if unknown or done)."""
        for item in self.waiting:
            if request_of(item).request_id == request_id:
                self.waiting.remove(item)
                if isinstance(item, Running):
                    item.finish_reason = item.finish_reason or "abort"
                return item
        for seq in self.running:
            if seq.request.request_id == request_id:
                seq.finish_reason = seq.finish_reason or "abort"
                self.finish(seq)
                return seq
        return None


def request_of(item: Request | Running) -> Request:
    return item.request if isinstance(item, Running) else item
