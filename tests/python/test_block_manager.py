"""BlockManager: block tables, reference counts, the prefix cache's chained hashes and its LRU
eviction, without a model."""

from __future__ import annotations

import pytest

from kvinfer.block_manager import BlockManager

A = list(range(100, 140))  # 40 tokens: blocks [0, 16) and [16, 32) are full, 8 tokens spill over


def computed(m: BlockManager, prompt: list[int]):
    """A sequence whose whole prompt was prefilled and then ended."""
    t = m.allocate(prompt)
    m.register(t, prompt, len(prompt))
    m.free(t)
    return t


def test_a_table_covers_its_prompt_and_frees_every_block():
    m = BlockManager(8, 16)
    t = m.allocate(A)
    assert len(t.blocks) == 3 and len(set(t.blocks)) == 3 and t.cached == 0
    assert m.used_blocks() == 3
    m.ensure(t, 48)
    assert len(t.blocks) == 3
    m.ensure(t, 49)  # position 48 opens a fourth block
    assert len(t.blocks) == 4 and m.used_blocks() == 4
    m.free(t)
    assert m.used_blocks() == 0 and m.free_blocks() == 8


def test_a_repeated_prompt_reuses_its_full_blocks():
    m = BlockManager(8, 16)
    first = m.allocate(A)
    m.register(first, A, 40)
    blocks = list(first.blocks)
    m.free(first)
    again = m.allocate(A)
    assert again.cached == 32 and again.blocks[:2] == blocks[:2]
    assert again.blocks[2] not in blocks  # the partial block is the new sequence's own
    assert (m.hit_tokens, m.query_tokens) == (32, 80)


def test_the_last_prompt_token_is_always_computed():
    m = BlockManager(8, 16)
    computed(m, A[:32])  # exactly two full blocks
    t = m.allocate(A[:32])
    assert t.cached == 16  # not 32: the step that samples needs the last token's logits


def test_a_prefix_that_ends_mid_block_reuses_the_blocks_before_it():
    m = BlockManager(8, 16)
    computed(m, A)
    other = A[:20] + [7] * 20  # the same 20 tokens, then different ones
    assert m.allocate(other).cached == 16


def test_hashes_are_chained_over_the_whole_prefix():
    m = BlockManager(8, 16)
    computed(m, A)
    same_second_block = [1] * 16 + A[16:40]
    assert m.allocate(same_second_block).cached == 0


def test_a_hash_collision_is_a_miss(monkeypatch):
    m = BlockManager(8, 16)
    monkeypatch.setattr(BlockManager, "chain", staticmethod(lambda prev, tokens: 42))
    computed(m, A)
    assert m.allocate([9] * 40).cached == 0  # equal hashes, different tokens
    assert m.allocate(A).cached == 16        # block 0 is registered under 42; block 1 collided with it


def test_shared_blocks_are_referenced_until_the_last_sequence_ends():
    m = BlockManager(8, 16)
    computed(m, A)
    s1, s2 = m.allocate(A), m.allocate(A)
    assert s1.blocks[:2] == s2.blocks[:2] and s1.blocks[2] != s2.blocks[2]
    assert m.used_blocks() == 4  # two shared, one own each
    m.free(s1)
    assert m.used_blocks() == 3
    m.free(s2)
    assert m.used_blocks() == 0


def test_unreferenced_cached_blocks_are_evicted_least_recently_freed_first():
    m = BlockManager(4, 16)
    computed(m, A[:33])       # registers 2 blocks, frees 3
    computed(m, [5] * 33)     # takes the 1 never-used block first, then the oldest freed ones
    t = m.allocate([5] * 33)
    assert t.cached == 32
    m.free(t)
    assert m.allocate(A[:33]).cached == 0   # its blocks were taken since: evicted, not reused


def test_a_pool_too_small_fails_with_the_numbers_and_keeps_nothing():
    m = BlockManager(4, 16)
    held = m.allocate(A[:32])
    with pytest.raises(RuntimeError, match="the KV cache has 2 free blocks of 4; 3 more are needed for 40 tokens"):
        m.allocate(A)
    assert m.used_blocks() == 2
    with pytest.raises(RuntimeError):
        m.ensure(held, 100)
    assert len(held.blocks) == 2


def test_block_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="block_size=12 a power of two"):
        BlockManager(8, 12)
