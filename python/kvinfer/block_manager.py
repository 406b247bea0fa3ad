"""KV-cache blocks of one runner: which block holds which tokens of which sequence, and the prefix
cache. A sequence owns a block table (its blocks in position order); blocks are reference-counted,
so sequences that start with the same tokens share the blocks of that prefix.

Prefix reuse: a full block whose K/V are computed is registered under a hash chained over its
tokens and its predecessor's hash, so equal hashes mean equal prefixes (the tokens are compared
too, so a hash collision is a miss, never a wrong answer). A new sequence takes the longest run of
registered blocks that starts its prompt and computes only the rest; at least its last prompt token
is always computed, since the step that samples needs its logits. Blocks nobody references stay
registered, and reusable, until a new block is needed and they are the least recently freed.

Thread-safe: the serving engine's thread and LLM calls share one manager."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field


class OutOfBlocks(RuntimeError):
    """The pool has fewer free blocks than asked for (nothing was taken)."""


@dataclass
class BlockTable:
    """A sequence's blocks; `cached` of its prompt's tokens were found in the prefix cache."""
    blocks: list[int] = field(default_factory=list)
    cached: int = 0
    registered: int = 0   # leading blocks already in the prefix cache (shared or registered by us)
    hashes: list[int] = field(default_factory=list)  # chain hash of each registered block


@dataclass
class _Block:
    refs: int = 0
    hash: int | None = None          # set while registered in the prefix cache
    tokens: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"num_blocks={num_blocks} must be >= 1 and block_size={block_size} a power of two")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # LRU first
        self._by_hash: dict[int, int] = {}
        self._lock = threading.Lock()
        self.hit_tokens = 0     # prompt tokens found in the prefix cache
        self.query_tokens = 0   # prompt tokens looked up

    # ---- queries ------------------------------------------------------------------------------------
    def free_blocks(self) -> int:
        """Blocks no sequence references (registered ones among them stay reusable until taken)."""
        with self._lock:
            return len(self._free)

    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @staticmethod
    def chain(prev: int, tokens) -> int:
        return hash((prev, tuple(tokens)))

    # ---- a sequence's life --------------------------------------------------------------------------
    def allocate(self, prompt: list[int], reuse: bool = True) -> BlockTable:
        """A table for a new sequence: the longest cached prefix of whole blocks (when `reuse`),
        then fresh blocks for the rest of the prompt. OutOfBlocks when the pool is short."""
        bs, table = self.block_size, BlockTable()
        with self._lock:
            if reuse:
                prev = 0
                for i in range((len(prompt) - 1) // bs):  # never the block of the last prompt token
                    tokens = tuple(prompt[i * bs:(i + 1) * bs])
                    h = self.chain(prev, tokens)
                    b = self._by_hash.get(h)
                    if b is None or self._blocks[b].tokens != tokens:
                        break
                    self._ref(b)
                    table.blocks.append(b)
                    table.hashes.append(h)
                    prev = h
                table.registered = len(table.blocks)
                table.cached = table.registered * bs
                self.hit_tokens += table.cached
                self.query_tokens += len(prompt)
            try:
                self._grow(table, len(prompt))
            except OutOfBlocks:
                self._release(table)
                raise
        return table

    def fork(self, parent: BlockTable, tokens: int) -> tuple[BlockTable, tuple[int, int]]:
        """A table for a sequence whose first `tokens` positions hold the tokens of `parent`'s, whose
        K/V are computed or enqueued (the same prompt, an n > 1 choice): it shares parent's blocks
        before the one that holds position tokens - 1 and takes a fresh block for that one, which
        the caller fills with a copy of parent's (copy-on-write: both sequences write there next).
        Its `cached` is tokens - 1: the last prompt token is computed again, for its own first
        sample. Returns the table and the (source, destination) blocks of the copy."""
        keep = (tokens - 1) // self.block_size
        if not 1 <= tokens <= len(parent.blocks) * self.block_size:
            raise ValueError(f"fork of {tokens} tokens from a table of {len(parent.blocks)} blocks")
        table = BlockTable()
        with self._lock:
            if not self._free:
                raise OutOfBlocks(f"the KV cache has no free block of {self.num_blocks} for a copy-on-write")
            for b in parent.blocks[:keep]:
                self._ref(b)
                table.blocks.append(b)
            table.registered = min(parent.registered, keep)
            table.hashes = parent.hashes[:table.registered]
            self._grow(table, keep * self.block_size + 1)
            table.cached = tokens - 1
            self.hit_tokens += tokens - 1
            self.query_tokens += tokens
        return table, (parent.blocks[keep], table.blocks[keep])

    def ensure(self, table: BlockTable, tokens: int) -> None:
        """Blocks for the first `tokens` positions (the ones a step is about to write)."""
        with self._lock:
            self._grow(table, tokens)

    def register(self, table: BlockTable, token_ids: list[int], computed: int) -> None:
        """Registers the full blocks among the first `computed` positions, whose K/V are written
        (or enqueued on the stream before any later step), token_ids[p] being position p's token."""
        bs = self.block_size
        with self._lock:
            while table.registered < min(computed // bs, len(table.blocks)):
                i = table.registered
                tokens = tuple(token_ids[i * bs:(i + 1) * bs])
                h = self.chain(table.hashes[-1] if table.hashes else 0, tokens)
                block = self._blocks[table.blocks[i]]
                if block.hash is None and h not in self._by_hash:
                    block.hash, block.tokens = h, tokens
                    self._by_hash[h] = table.blocks[i]
                table.hashes.append(h)  # an equal block registered by another sequence: chain on
                table.registered += 1

    def free(self, table: BlockTable) -> None:
        """The sequence is done: its blocks lose a reference (registered ones stay reusable)."""
        with self._lock:
            self._release(table)

    # ---- inside the lock -----------------------------------------------------------------------------
    def _ref(self, b: int) -> None:
        if self._blocks[b].refs == 0:
            del self._free[b]
        self._blocks[b].refs += 1

    def _grow(self, table: BlockTable, tokens: int) -> None:
        need = self.blocks_for(tokens) - len(table.blocks)
        if need > len(self._free):
            raise OutOfBlocks(f"the KV cache has {len(self._free)} free blocks of {self.num_blocks}; "
                               f"{need} more are needed for {tokens} tokens")
        if need <= 0:
            return
        free, blocks, by_hash = self._free, self._blocks, self._by_hash
        taken = [free.popitem(last=False)[0] for _ in range(need)]  # the least recently freed
        for b in taken:
            block = blocks[b]
            if block.hash is not None:  # evicted from the prefix cache
                del by_hash[block.hash]
                block.hash, block.tokens = None, ()
            block.refs = 1
        table.blocks.extend(taken)

    def _release(self, table: BlockTable) -> None:
        for b in reversed(table.blocks):  # the prefix's head is freed last: evicted last
            block = self._blocks[b]
            block.refs -= 1
            if block.refs == 0:
                self._free[b] = None
        table.blocks = []
