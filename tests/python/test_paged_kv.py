"""The paged KV cache through the runner: a sequence whose blocks are scattered over the pool in any
order gives the bits of the same sequence in its slot's own blocks, at block boundaries (15, 16, 17
tokens), for prompt chunks that end mid-block, in steps that mix sequences, and through a pool
smaller than the slots would need; block tables the runner cannot honour are refused before
anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DEVICES
from kvinfer import _core
from kvinfer.step_inputs import SAMPLING_DTYPE
from kvinfer.weights import load_weights
from tiny_models import make_model

BLOCK = 16
CONTEXT = 64  # 4 blocks per sequence


def i32(*v):
    return np.array(v, np.int32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("paged") / "llama_gqa3"))


def runner(folder, device, num_blocks=0, max_batch=4):
    from kvinfer.config import model_config, read_config_json

    config = model_config(read_config_json(folder))
    r = _core.Runner(config, device, max_batch, CONTEXT, 64, None, False, num_blocks, BLOCK)
    load_weights(r, config, folder)
    return r, config


def run(r, vocab, seqs, chunks, tables=None):
    """Steps of several sequences at once: chunks[k][b] new tokens of sequence b in step k (0: it
    sits the step out). Returns each step's logits [rows][vocab], one row per sequence that ran."""
    done = [0] * len(seqs)
    out = []
    for chunk in chunks:
        live = [b for b, n in enumerate(chunk) if n > 0]
        tokens = np.concatenate([seqs[b][done[b]:done[b] + chunk[b]] for b in live]).astype(np.int32)
        starts = np.cumsum([0] + [chunk[b] for b in live]).astype(np.int32)
        logits = np.empty((len(live), vocab), np.float32)
        table = None if tables is None else np.ascontiguousarray(tables[live], np.int32)
        r.step(tokens, starts, i32(*[done[b] for b in live]), i32(*live), (starts[1:] - 1).astype(np.int32),
               block_tables=table, logits=logits)
        for b in live:
            done[b] += chunk[b]
        out.append(logits)
    return out


def scrambled(num_seqs: int, pool: int, seed: int) -> np.ndarray:
    """[num_seqs][CONTEXT // BLOCK] distinct blocks drawn from [0, pool) in a random order."""
    blocks = np.random.default_rng(seed).permutation(pool)[:num_seqs * (CONTEXT // BLOCK)]
    return blocks.reshape(num_seqs, -1).astype(np.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prompt_len", [15, 16, 17])
def test_scattered_blocks_give_the_bits_of_a_slots_own(folder, device, prompt_len):
    r, config = runner(folder, device)
    ids = np.random.default_rng(prompt_len).integers(1, config.vocab_size, prompt_len + 20)
    chunks = [[5], [prompt_len - 5]] + [[1]] * 20  # a chunk that ends mid-block, then decode across blocks
    own = run(r, config.vocab_size, [ids], chunks)
    # a fresh runner: a write or read that missed the tables would meet zeros, not the first run's K/V
    fresh, _ = runner(folder, device)
    paged = run(fresh, config.vocab_size, [ids], chunks, tables=scrambled(1, fresh.num_blocks, prompt_len))
    for step, (a, b) in enumerate(zip(own, paged)):
        assert a.shape == b.shape == (1, config.vocab_size)
        assert np.isfinite(a).all()
        assert np.array_equal(a, b), f"step {step} differs"


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_steps_and_a_pool_smaller_than_the_slots(folder, device):
    """Three sequences in steps of prompt chunks and decodes, in a pool of 9 blocks where the slots'
    own would need 16: each sequence gives the bits it gives alone in its slot's own blocks."""
    r, config = runner(folder, device)
    rng = np.random.default_rng(7)
    seqs = [rng.integers(1, config.vocab_size, n) for n in (40, 23, 33)]
    chunks = [[20, 16, 0], [20, 7, 17], [0, 0, 16]]
    alone = [run(r, config.vocab_size, [s], [[n] for n in (c[b] for c in chunks) if n])
             for b, s in enumerate(seqs)]
    small, _ = runner(folder, device, num_blocks=9)
    assert small.num_blocks == 9
    # sequence 0 holds 40 tokens (3 blocks), 1: 23 (2), 2: 33 (3): 8 of the 9 blocks, scattered
    tables = np.array([[8, 2, 5, 0], [1, 7, 0, 0], [3, 6, 4, 0]], np.int32)
    mixed = run(small, config.vocab_size, seqs, chunks, tables=tables)
    for b in range(3):
        rows = [step[[bb for bb, n in enumerate(c) if n > 0].index(b)] for step, c in zip(mixed, chunks) if c[b]]
        assert len(rows) == len(alone[b])
        for k, (a, m) in enumerate(zip(alone[b], rows)):
            assert np.array_equal(a[0], m), f"sequence {b}, its step {k} differs"
    with pytest.raises(ValueError, match="slot 2 has no blocks of its own"):  # 9 blocks: slots 0 and 1 only
        small.step(i32(1), i32(0, 1), i32(0), i32(2), i32(0))


@pytest.mark.parametrize("device", DEVICES)
def test_block_tables_the_runner_cannot_honour(folder, device):
    r, _ = runner(folder, device, num_blocks=6)

    def step(tables, cached=(0,), n=(17,)):
        tokens = np.ones(sum(n), np.int32)
        starts = np.cumsum((0,) + n).astype(np.int32)
        r.step(tokens, starts, np.array(cached, np.int32), np.arange(len(n), dtype=np.int32),
               (starts[1:] - 1).astype(np.int32), block_tables=np.array(tables, np.int32))

    with pytest.raises(ValueError, match=r"block table entry 1=6 is out of range \[0, num_blocks=6\)"):
        step([[0, 6]])
    with pytest.raises(ValueError, match=r"entry 0=-1"):
        step([[-1, 0]])
    with pytest.raises(ValueError, match="holds 17 tokens in 2 blocks of 16 but its block table has 1 entries"):
        step([[0]])
    with pytest.raises(ValueError, match="block 3 is written by sequences 0 and 1 in one step"):
        step([[3, 0], [3, 1]], cached=(0, 0), n=(1, 1))
    with pytest.raises(ValueError, match=r"block_tables must be int32 \[len\(kv_slots\)=1, width >= 1\]"):
        step([[[0, 1]]])
    # a block shared for reading is fine: both read block 0, each writes its own second block
    step([[0, 4], [0, 5]], cached=(16, 16), n=(1, 1))
    args = np.zeros(1, SAMPLING_DTYPE)
    args["top_p"] = args["repetition_penalty"] = 1.0  # greedy
    assert r.step(i32(1), i32(0, 1), i32(0), i32(0), i32(0), args, block_tables=i32(2)[None]).shape == (1,)


@pytest.mark.parametrize("device", DEVICES)
def test_prompts_that_share_a_prefix_reuse_its_blocks(folder, device):
    """LLM.generate: prompts after the first find the shared 40 tokens' two whole blocks cached and
    give the tokens of computing everything; a repetition penalty (which reads the token history a
    reused prefix never wrote) computes it all; no block stays held."""
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    rng = np.random.default_rng(3)
    shared = rng.integers(1, 300, 40).tolist()
    prompts = [shared + rng.integers(1, 300, 5 + i).tolist() for i in range(3)]
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    cached = LLM(folder, device=device, max_context=CONTEXT, max_batch=2)
    plain = LLM(folder, device=device, max_context=CONTEXT, max_batch=2, prefix_caching=False)
    for p in prompts:
        assert cached.generate([p], greedy)[0].token_ids == plain.generate([p], greedy)[0].token_ids
    assert cached.engine.blocks.hit_tokens == 2 * 32 and plain.engine.blocks.hit_tokens == 0
    penalised = SamplingParams(max_tokens=4, temperature=0, repetition_penalty=1.3, ignore_eos=True)
    cached.generate([prompts[0]], penalised)
    assert cached.engine.blocks.hit_tokens == 2 * 32
    assert cached.engine.blocks.used_blocks() == 0 and plain.engine.blocks.used_blocks() == 0


def test_copy_blocks_copies_every_layer_and_refuses_what_it_cannot_do(folder, device):
    r, config = runner(folder, device, num_blocks=8)
    rng = np.random.default_rng(4)
    prompt = rng.integers(1, 300, 20).astype(np.int32)  # blocks 5 (positions 0-15) and 2 (16-19)
    table = i32(5, 2, 7, 0)[None]
    r.step(prompt, i32(0, 20), i32(0), i32(0), i32(19), block_tables=table, logits=np.empty((1, config.vocab_size),
                                                                                          np.float32))
    r.copy_blocks(i32(5, 2), i32(6, 3))
    for layer in range(config.num_layers):
        for keys in (True, False):
            want = r.cache.read_blocks(layer, i32(5, 2), 20, keys)
            assert np.array_equal(r.cache.read_blocks(layer, i32(6, 3), 20, keys), want)
    for src, dst, match in [((5,), (8,), "out of range"), ((5, 2), (6, 6), "appears twice"),
                            ((5, 6), (6, 1), "both a source and a destination"), ((5, 2), (6,), "one length")]:
        with pytest.raises(ValueError, match=match):
            r.copy_blocks(i32(*src), i32(*dst))


def test_choices_of_one_prompt_fork_its_blocks_copy_on_write(folder, device):
    """n choices of one prompt that ends mid-block (37 tokens: two whole blocks and 5 tokens): the
    later ones share the first's whole blocks and get a copy of its third, then each writes its own
    tokens there. Each equals the same request alone, computed in full; the pool ends empty."""
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams
    from step_helpers import reference_ids

    rng = np.random.default_rng(5)
    prompt = rng.integers(1, 300, 37).tolist()
    params = [SamplingParams(max_tokens=10, temperature=0.9, seed=s, ignore_eos=True) for s in (1, 2, 3)]
    llm = LLM(folder, device=device, max_context=CONTEXT, max_batch=4, max_step_tokens=64)
    got = [o.token_ids for o in llm.generate([prompt] * 3, params)]
    assert llm.engine.blocks.hit_tokens == 2 * 36  # forks: all but the last prompt token shared or copied
    want = [reference_ids(llm, prompt, p, p.seed) for p in params]
    assert got == want and len({tuple(g) for g in got}) > 1
    assert llm.engine.blocks.used_blocks() == 0
