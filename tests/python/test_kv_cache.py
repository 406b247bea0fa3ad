"""KVCache through Python: sizes, validation, round trips, slots, capacity, messages."""

import numpy as np
import pytest

import kvinfer
from kvinfer import KVCache, KVCacheConfig

FIELDS = ["num_layers", "max_context", "num_kv_heads", "head_dim", "max_batch"]


def rows(rng, tokens, heads, dim, dtype=np.float16):
    # never zero, so unwritten memory cannot pass for data
    x = rng.uniform(0.25, 4.0, size=(tokens, heads, dim)) * rng.choice([-1.0, 1.0], size=(tokens, heads, dim))
    return x.astype(dtype)


def fill_step(cache, slot, tokens, rng, dtype=np.float16):
    cfg = cache.config
    ks, vs = [], []
    for layer in range(cfg.num_layers):
        k, v = rows(rng, tokens, cfg.num_kv_heads, cfg.head_dim, dtype), rows(rng, tokens, cfg.num_kv_heads, cfg.head_dim, dtype)
        cache.append(layer, slot, k, v)
        ks.append(k.astype(np.float16))
        vs.append(v.astype(np.float16))
    cache.commit(slot, tokens)
    return ks, vs


def assert_bit_equal(expected, got):
    assert got.shape == expected.shape, (got.shape, expected.shape)  # shapes first
    assert got.dtype == np.float16
    assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ((24, 2048, 2, 64), 25_165_824),  # Qwen2.5-0.5B @ 2K
        ((32, 4096, 8, 128), 536_870_912),  # Llama-3-8B @ 4K
        ((80, 8192, 8, 128), 2_684_354_560),  # Llama-3-70B @ 8K
    ],
)
def test_reference_sizes(cfg, expected):
    assert KVCache.size_bytes(KVCacheConfig(*cfg)) == expected
    c = KVCacheConfig(*cfg, max_batch=3)
    assert KVCache.size_bytes(c) == 3 * expected


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [0, -3])
def test_every_field_must_be_positive(field, bad):
    args = dict(num_layers=2, max_context=16, num_kv_heads=2, head_dim=64, max_batch=1)
    args[field] = bad
    with pytest.raises(ValueError, match=f"{field}={bad} must be > 0"):
        KVCacheConfig(**args)


def test_config_is_value_like():
    a = KVCacheConfig(2, 16, 2, 64)
    assert a == KVCacheConfig(num_layers=2, max_context=16, num_kv_heads=2, head_dim=64, max_batch=1)
    assert "max_context=16" in repr(a)
    with pytest.raises(AttributeError):
        a.num_layers = 3


def test_tracked_as_kv_cache_and_released(device):
    t = kvinfer.VramTracker()
    cfg = KVCacheConfig(4, 32, 2, 64, max_batch=3)
    cache = KVCache(cfg, device=device, tracker=t)
    assert cache.nbytes == KVCache.size_bytes(cfg) == t.bytes("kv_cache")
    assert cache.device == device
    assert cache.lengths == [0, 0, 0]
    del cache
    assert t.total_bytes == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_bit_exact(device, dtype):
    rng = np.random.default_rng(0)
    cache = KVCache(KVCacheConfig(2, 64, 3, 80), device=device, tracker=kvinfer.VramTracker())
    ks, vs = fill_step(cache, 0, 17, rng, dtype)
    assert cache.length(0) == 17
    for layer in range(2):
        assert_bit_equal(ks[layer], cache.keys(layer, 0))
        assert_bit_equal(vs[layer], cache.values(layer, 0))


def test_slots_grow_independently(device):
    rng = np.random.default_rng(1)
    cache = KVCache(KVCacheConfig(3, 40, 2, 64, max_batch=4), device=device, tracker=kvinfer.VramTracker())
    want = {(l, s): ([], []) for l in range(3) for s in range(4)}
    for slot, tokens in [(0, 5), (2, 13), (3, 1), (0, 1), (2, 1), (0, 7), (1, 3), (0, 1)]:
        ks, vs = fill_step(cache, slot, tokens, rng)
        for layer in range(3):
            want[layer, slot][0].append(ks[layer])
            want[layer, slot][1].append(vs[layer])
    assert cache.lengths == [14, 3, 14, 1]
    for (layer, slot), (ks, vs) in want.items():
        assert_bit_equal(np.concatenate(ks), cache.keys(layer, slot))
        assert_bit_equal(np.concatenate(vs), cache.values(layer, slot))
    cache.clear(2)
    assert cache.lengths == [14, 3, 0, 1]
    assert cache.keys(0, 2).shape == (0, 2, 64)
    cache.reset()
    assert cache.lengths == [0, 0, 0, 0]


def test_capacity_exact_then_overflow_writes_nothing(device):
    rng = np.random.default_rng(2)
    cache = KVCache(KVCacheConfig(2, 12, 2, 16, max_batch=2), device=device, tracker=kvinfer.VramTracker())
    ks, _ = fill_step(cache, 1, 10, rng)
    ks2, _ = fill_step(cache, 1, 2, rng)
    assert cache.length(1) == 12
    one = rows(rng, 1, 2, 16)
    with pytest.raises(kvinfer.ContextOverflowError) as e:
        cache.append(0, 1, one, one)
    assert isinstance(e.value, ValueError)
    for part in ("slot 1", "holds 12", "appending 1", "capacity of 12"):
        assert part in str(e.value), str(e.value)
    assert cache.length(1) == 12 and cache.pending(1) == 0
    assert_bit_equal(np.concatenate([ks[0], ks2[0]]), cache.keys(0, 1))
    with pytest.raises(kvinfer.ContextOverflowError):
        cache.append(0, 0, rows(rng, 13, 2, 16), rows(rng, 13, 2, 16))
    assert cache.length(0) == 0 and cache.pending(0) == 0


def test_shape_and_dtype_messages():
    cache = KVCache(KVCacheConfig(1, 8, 2, 64), tracker=kvinfer.VramTracker())
    good = np.ones((3, 2, 64), np.float16)
    with pytest.raises(ValueError, match=r"k.shape=\(3, 4, 64\) != expected \(tokens>0, num_kv_heads=2, head_dim=64\)"):
        cache.append(0, 0, np.ones((3, 4, 64), np.float16), good)
    with pytest.raises(ValueError, match=r"v.shape=\(3, 2, 32\)"):
        cache.append(0, 0, good, np.ones((3, 2, 32), np.float16))
    with pytest.raises(ValueError, match=r"k.shape=\(3, 2, 64\) != v.shape=\(2, 2, 64\)"):
        cache.append(0, 0, good, np.ones((2, 2, 64), np.float16))
    with pytest.raises(ValueError, match="dtype=float64 is not supported"):
        cache.append(0, 0, good.astype(np.float64), good)
    with pytest.raises(ValueError, match=r"k.shape=\(2, 64\)"):
        cache.append(0, 0, good[0], good)
    assert cache.pending(0) == 0


def test_bounds_and_commit_rules(device):
    cache = KVCache(KVCacheConfig(2, 8, 1, 8, max_batch=2), device=device, tracker=kvinfer.VramTracker())
    r = np.ones((2, 1, 8), np.float16)
    with pytest.raises(IndexError, match=r"layer=2 is out of range \[0, 2\)"):
        cache.append(2, 0, r, r)
    with pytest.raises(IndexError, match=r"slot=2 is out of range \[0, 2\)"):
        cache.keys(0, 2)
    cache.append(0, 0, r, r)
    with pytest.raises(ValueError, match="already appended"):
        cache.append(0, 0, r, r)
    with pytest.raises(ValueError, match="layer 1 was not appended"):
        cache.commit(0, 2)
    cache.append(1, 0, r, r)
    with pytest.raises(ValueError, match="appended 2 tokens"):
        cache.commit(0, 1)
    cache.commit(0, 2)
    assert cache.length(0) == 2
    assert cache.keys(1, 0).shape == (2, 1, 8)


def test_non_contiguous_input_is_accepted(device):
    rng = np.random.default_rng(3)
    cache = KVCache(KVCacheConfig(1, 8, 2, 4), device=device, tracker=kvinfer.VramTracker())
    big = rows(rng, 4, 2, 8)
    k = big[:, :, ::2]  # strided view
    cache.append(0, 0, k, k)
    cache.commit(0, 4)
    assert_bit_equal(np.ascontiguousarray(k), cache.keys(0, 0))


def test_planted_bugs_are_caught(device):
    """The comparisons above must fail on a wrong slot, K/V mix-up, truncation or a flipped bit."""
    rng = np.random.default_rng(4)
    cache = KVCache(KVCacheConfig(1, 8, 2, 8, max_batch=2), device=device, tracker=kvinfer.VramTracker())
    k0, v0 = fill_step(cache, 0, 3, rng)
    fill_step(cache, 1, 3, rng)
    for wrong in (cache.keys(0, 1), cache.values(0, 0), cache.keys(0, 0)[:2]):
        with pytest.raises(AssertionError):
            assert_bit_equal(k0[0], wrong)
    flipped = cache.keys(0, 0).copy()
    flipped.view(np.uint16)[1, 1, 5] ^= 1
    with pytest.raises(AssertionError):
        assert_bit_equal(k0[0], flipped)
    assert_bit_equal(k0[0], cache.keys(0, 0))
