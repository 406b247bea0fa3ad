"""What the generation loops share on one native Runner: its sequence slots and KV-cache blocks (a
prompt that starts like an earlier one reuses its blocks: kvinfer/block_manager.py), a lock that
serialises every use of the runner, and how a sampled token joins its sequence. The loop itself is
kvinfer/serving.py (continuous batching; LLM.generate and LLM.stream run on it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from kvinfer import _core
from kvinfer.block_manager import BlockManager, BlockTable
from kvinfer.sampling import SamplingParams


@dataclass
class Slot:
    """What Engine.begin/grow/end need of a sequence: its slot, blocks and cached length."""
    slot: int
    table: BlockTable | None = None
    cached: int = 0


class Engine:
    """The slots and KV blocks of one Runner, and the lock that serialises its use. Every step
    names each sequence's blocks: `block_rows` holds each slot's block table, written as blocks
    are added, so a step's tables are one gather (and `sampling_rows` its sampling arguments)."""

    def __init__(self, runner: _core.Runner, eos_ids: set[int], prefix_caching: bool = True):
        self.runner = runner
        self.eos_ids = eos_ids
        self.prefix_caching = prefix_caching
        self.lock = threading.RLock()
        self._slots_lock = threading.Lock()  # not `lock`: that one is held while steps are in flight
        self._free = list(range(runner.max_batch))
        self.blocks = BlockManager(runner.num_blocks, runner.block_size)
        self.block_rows = np.zeros((runner.max_batch, -(-runner.max_context // runner.block_size)), np.int32)
        # each slot's sampling arguments, written when its sequence is admitted: a step's are one gather
        self.sampling_rows = np.zeros(runner.max_batch, _core.sampling_args_dtype())

    # ---- KV blocks --------------------------------------------------------------------------------
    def begin(self, seq, prompt: list[int], reuse: bool) -> None:
        """Blocks for a new sequence's prompt (`seq.slot` is set; `seq.table` and `seq.cached` are
        set here): the prefix cache's when `reuse` and prefix caching are on. Penalties read the
        slot's token history, which a reused prefix never wrote: such a sequence computes it all.
        OutOfBlocks (nothing held) when the pool is short."""
        table = self.blocks.allocate(prompt, reuse and self.prefix_caching)
        seq.table, seq.cached = table, table.cached
        self._sync_row(seq)

    def fork(self, seq, parent, tokens: int) -> None:
        """Blocks for a new sequence whose first `tokens` tokens are those of `parent` (running, with
        them computed): parent's full blocks shared, the block of the last prompt token copied on
        the device (block_manager.BlockManager.fork). OutOfBlocks when no block is free."""
        table, (src, dst) = self.blocks.fork(parent.table, tokens)
        try:
            self.runner.copy_blocks(np.array([src], np.int32), np.array([dst], np.int32))
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
        """The sequence is done: its computed full blocks join the prefix cache (token_ids[p]:
        position p's token), and its blocks lose their reference. A step still in flight may write
        them; whatever reads them next is enqueued after it."""
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
        with self._slots_lock:
            return len(self._free)

    def take_slots(self, n: int) -> list[int]:
        with self._slots_lock:
            if not self._free:
                raise ValueError(f"all {self.runner.max_batch} sequence slots are in use")
            taken, self._free = self._free[:n], self._free[n:]
            return taken

    def try_take_slot(self) -> int | None:
        with self._slots_lock:
            return self._free.pop(0) if self._free else None

    def give_back(self, slots: list[int]) -> None:
        with self._slots_lock:
            self._free = sorted(self._free + slots)


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
