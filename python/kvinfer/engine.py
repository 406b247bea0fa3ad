"""The generation loop over a native Runner: sequences take sequence slots and KV-cache blocks (a
prompt that starts like an earlier one reuses its blocks: kvinfer/block_manager.py), prompts are
prefilled in chunks of at most max_step_tokens tokens, then every unfinished sequence decodes one token per
step. generate() keeps two decode steps in flight: step n + 1 is enqueued (its input tokens taken
on the device from step n's samples) before step n's tokens are read, so the GPU never waits for
the host; stop conditions are checked one step late and a finished sequence's extra token is
dropped. Each sequence carries its own cached length; the runner keeps none."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from kvinfer import _core
from kvinfer.block_manager import BlockManager, BlockTable
from kvinfer.sampling import SamplingParams
from kvinfer.tokenizer import StreamDecoder

SAMPLING_DTYPE = _core.sampling_args_dtype()
LOGIT_BIAS_DTYPE = _core.logit_bias_dtype()


def logit_biases(args: np.ndarray, entries: list[list[tuple[int, float]]]) -> np.ndarray | None:
    """Packs each sampled row's (token, bias) entries into one array, pointing args' rows at theirs
    (bias_start, bias_count); None when no row has any."""
    counts = [len(e) for e in entries]
    if not any(counts):
        return None
    starts = np.cumsum([0] + counts)
    args["bias_start"], args["bias_count"] = starts[:-1], counts
    out = np.zeros(starts[-1], LOGIT_BIAS_DTYPE)
    out["token"] = [t for e in entries for t, _ in e]
    out["bias"] = [b for e in entries for _, b in e]
    return out


@dataclass
class Sequence:
    index: int               # in the caller's list of prompts
    slot: int                # sequence slot (its token history), held until the sequence ends
    prompt_ids: list[int]
    seed: int
    decoder: StreamDecoder
    table: BlockTable | None = None  # its KV-cache blocks, from Engine.begin until Engine.end
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_from: int = 0       # stop strings are looked for from here (min_tokens)
    cached: int = 0          # tokens of this sequence whose K/V are in the cache (or enqueued)
    sampled: int = 0         # tokens sampled (or enqueued to be)


class Engine:
    """Runs waves of sequences on one Runner. A lock serialises every use of the runner; slots and
    KV blocks come from pools, so a suspended stream and a generate() never share one. Every step
    names each sequence's blocks: `block_rows` holds each slot's block table, written as blocks
    are added, so a step's tables are one gather."""

    def __init__(self, runner: _core.Runner, eos_ids: set[int], prefix_caching: bool = True):
        self.runner = runner
        self.eos_ids = eos_ids
        self.prefix_caching = prefix_caching
        self.lock = threading.RLock()
        self._free = list(range(runner.max_batch))
        self.blocks = BlockManager(runner.num_blocks, runner.block_size)
        self.block_rows = np.zeros((runner.max_batch, -(-runner.max_context // runner.block_size)), np.int32)

    # ---- KV blocks --------------------------------------------------------------------------------
    def begin(self, seq, prompt: list[int], reuse: bool, reserve: int = 0) -> None:
        """Blocks for a new sequence's prompt (`seq.slot`, `seq.table`, `seq.cached` are set), and
        for `reserve` tokens in all when given: the prefix cache's when `reuse` and prefix caching
        are on. A repetition penalty reads the slot's token history, which a reused prefix never
        wrote: such a sequence computes it all. OutOfBlocks (nothing held) when the pool is short."""
        table = self.blocks.allocate(prompt, reuse and self.prefix_caching)
        try:
            if reserve > len(prompt):
                self.blocks.ensure(table, reserve)
        except BaseException:
            self.blocks.free(table)
            raise
        seq.table, seq.cached = table, table.cached
        self._sync_row(seq)

    def grow(self, seq, tokens: int) -> None:
        """Blocks for the first `tokens` positions of `seq` (before a step writes them)."""
        if tokens > len(seq.table.blocks) * self.blocks.block_size:
            self.blocks.ensure(seq.table, tokens)
            self._sync_row(seq)

    def end(self, seq, token_ids: list[int]) -> None:
        """The sequence is done (nothing of it in flight): its computed full blocks join the prefix
        cache (token_ids[p]: position p's token), and its blocks lose their reference."""
        if seq.table is not None:
            self.blocks.register(seq.table, token_ids, seq.cached)
            self.blocks.free(seq.table)
            seq.table = None

    def tables(self, seqs) -> np.ndarray:
        return self.block_rows[[s.slot for s in seqs]]

    def _sync_row(self, seq) -> None:
        self.block_rows[seq.slot, :len(seq.table.blocks)] = seq.table.blocks

    # ---- slots ------------------------------------------------------------------------------------
    def free_slots(self) -> int:
        with self.lock:
            return len(self._free)

    def take_slots(self, n: int) -> list[int]:
        with self.lock:
            if not self._free:
                raise ValueError(f"all {self.runner.max_batch} sequence slots are held by unfinished "
                                   "streams; finish or close them first")
            taken, self._free = self._free[:n], self._free[n:]
            return taken

    def give_back(self, slots: list[int]) -> None:
        with self.lock:
            self._free = sorted(self._free + slots)

    # ---- waves ------------------------------------------------------------------------------------
    def run(self, seqs: list[Sequence], params: SamplingParams) -> None:
        """Runs a wave to the end, two decode steps in flight."""
        with self.lock:
            for _ in self.steps(seqs, params, depth=2):
                pass

    def steps(self, seqs: list[Sequence], params: SamplingParams, depth: int = 1) -> Iterator[Sequence]:
        """Yields a sequence after each token it gets. With depth 1 nothing is in flight at a yield
        (the lock is released there, so a stream can be suspended); whatever is in flight when the
        loop is abandoned is collected on the way out."""
        stop_ids = (set() if params.ignore_eos else self.eos_ids) | set(params.stop_token_ids)
        base = np.zeros(len(seqs), SAMPLING_DTYPE)
        for i, s in enumerate(seqs):
            base[i] = (params.temperature, params.top_k, params.top_p, params.min_p,
                       params.repetition_penalty, s.seed, 0, 0, 0)
        rows_of = {id(s): i for i, s in enumerate(seqs)}

        biased = bool(params.logit_bias or params.min_tokens)

        def args(rows: list[Sequence]) -> tuple[np.ndarray, np.ndarray | None]:
            a = base[[rows_of[id(s)] for s in rows]]
            a["step"] = [s.sampled for s in rows]
            return a, logit_biases(a, [params.biases(stop_ids, s.sampled) for s in rows]) if biased else None

        for s, token in self._prefill(seqs, args):
            yield from self._accept(s, token, params, stop_ids)
        in_flight: deque[list[Sequence]] = deque()
        try:
            while True:
                rows = [s for s in seqs if s.finish_reason is None and s.sampled < params.max_tokens]
                with self.lock:  # a step's launch and its collect in one hold: another caller's step
                    # never comes between them (generate() holds the lock for its whole run anyway)
                    if rows and len(in_flight) < depth:
                        self._launch_decode(rows, in_flight[-1] if in_flight else None, args(rows))
                        in_flight.append(rows)
                        if len(in_flight) < depth:
                            continue
                    if not in_flight:
                        return
                    tokens = self.runner.collect()
                for s, token in zip(in_flight.popleft(), tokens.tolist()):
                    if s.finish_reason is None:  # else the token was enqueued before its stop was seen
                        yield from self._accept(s, token, params, stop_ids)
        finally:  # abandoned (closed, interrupted): steps still in flight are this loop's, collect them
            if in_flight:
                with self.lock:
                    for _ in in_flight:
                        self.runner.collect()

    def _launch_decode(self, rows: list[Sequence], prev: list[Sequence] | None,
                       sampling: tuple[np.ndarray, np.ndarray | None]) -> None:
        n = len(rows)
        prev_row = {id(s): r for r, s in enumerate(prev)} if prev else {}
        from_prev = np.array([prev_row.get(id(s), -1) for s in rows], np.int32)
        tokens = np.array([s.token_ids[-1] if f < 0 else 0 for s, f in zip(rows, from_prev)], np.int32)
        cached = np.array([s.cached for s in rows], np.int32)
        steps = np.arange(n + 1, dtype=np.int32)
        for s in rows:
            self.grow(s, s.cached + 1)
        self.runner.launch(tokens, steps, cached, np.array([s.slot for s in rows], np.int32), steps[:n],
                           sampling[0], from_prev if prev_row else None, self.tables(rows), sampling[1])
        for s in rows:
            s.cached += 1
            s.sampled += 1

    def _prefill(self, seqs: list[Sequence], args) -> Iterator[tuple[Sequence, int]]:
        """Packs prompt chunks into steps of at most max_step_tokens tokens (one chunk per sequence
        per step); yields (sequence, first token) for each sequence whose prompt ends in a step."""
        budget_max = self.runner.max_step_tokens
        pending = list(seqs)
        while pending:
            step, budget, rest = [], budget_max, []
            for s in pending:
                n = min(len(s.prompt_ids) - s.cached, budget)
                if n > 0:
                    step.append((s, n))
                    budget -= n
                if s.cached + n < len(s.prompt_ids):
                    rest.append(s)
            tokens = np.concatenate([np.asarray(s.prompt_ids[s.cached:s.cached + n], np.int32) for s, n in step])
            starts = np.cumsum([0] + [n for _, n in step]).astype(np.int32)
            ending = [b for b, (s, n) in enumerate(step) if s.cached + n == len(s.prompt_ids)]
            sampling, biases = args([step[b][0] for b in ending])
            with self.lock:
                sampled = self.runner.step(tokens, starts, np.array([s.cached for s, _ in step], np.int32),
                                           np.array([s.slot for s, _ in step], np.int32),
                                           (starts[1:] - 1)[ending].astype(np.int32), sampling,
                                           block_tables=self.tables([s for s, _ in step]), logit_bias=biases)
            for s, n in step:
                s.cached += n
            for b, token in zip(ending, sampled.tolist()):
                step[b][0].sampled += 1
                yield step[b][0], token
            pending = rest

    @staticmethod
    def _accept(s: Sequence, token: int, params: SamplingParams, stop_ids: set[int]) -> Iterator[Sequence]:
        accept_token(s, token, params, stop_ids)
        yield s


def accept_token(s, token: int, params: SamplingParams, stop_ids) -> None:
    """A sampled token joins sequence `s` (token_ids, text, decoder, finish_reason): its text, then
    the stop conditions in order: a stop id, a stop string (cut from the text), max_tokens. Before
    min_tokens tokens only max_tokens ends it (the sampler bans the stop ids until then), and a
    stop string counts only where it starts after the text of the first min_tokens - 1 tokens."""
    s.token_ids.append(token)
    s.text += s.decoder.push(token)
    if len(s.token_ids) < params.min_tokens:
        s.stop_from = len(s.text)
    else:
        if token in stop_ids:
            s.finish_reason = "stop"
        for stop in params.stop:
            at = s.text.find(stop, s.stop_from)
            if at >= 0:
                s.text, s.finish_reason = s.text[:at], "stop"
    if s.finish_reason is None and len(s.token_ids) >= params.max_tokens:
        s.finish_reason = "length"
