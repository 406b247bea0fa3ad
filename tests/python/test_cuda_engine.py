"""The engine on CUDA: greedy tokens equal to the CPU backend and to HF transformers on the GPU
for every architecture; batches equal single runs; decode steps equal prefill rows."""

from __future__ import annotations

import numpy as np
import pytest

import kvinfer
from kvinfer import _core

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not _core.cuda_forward_available(), reason="no CUDA forward pass")]

from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from step_helpers import decode_rows  # noqa: E402
from tiny_models import ARCHS, CPU_ONLY, VOCAB, WIDE, make_model  # noqa: E402

GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cuda")
    return {name: make_model(name, str(root / name)) for name in {**ARCHS, **WIDE}}


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def load(folder, device, **kw):
    kw.setdefault("max_context", 256)
    kw.setdefault("max_batch", 8)
    kw.setdefault("max_step_tokens", 64)
    return LLM(folder, device=device, tracker=kvinfer.VramTracker(), **kw)


def well_conditioned(cpu: LLM, count: int = 2, margin: float = 5e-3) -> list[list[int]]:
    """Prompts whose greedy path (on the fp32 CPU reference) never has its top two logits within
    `margin` of the largest |logit|. The GPU's fp16 activations move logits by ~5e-4 of that scale,
    so a closer pair makes the greedy token a coin toss on any fp16 engine (one was seen at 5e-4).
    The choice uses the reference alone, never the GPU's output."""
    chosen = []
    for seed in range(2, 40):
        ids = prompt(30 + 41 * (seed % 3 + 2), seed)  # 112..194 tokens: several prefill steps
        toks = cpu.generate(ids, GREEDY)[0].token_ids
        rows = cpu.logits(ids + toks[:-1])[len(ids) - 1:]
        top2 = np.sort(rows, axis=1)[:, -2:]
        if ((top2[:, 1] - top2[:, 0]) / np.abs(rows).max(axis=1)).min() > margin:
            chosen.append(ids)
            if len(chosen) == count:
                return chosen
    raise AssertionError("no well-conditioned prompts found")


@pytest.mark.parametrize("name", [*ARCHS, *WIDE])
def test_greedy_equals_cpu_and_hf(name, model_dirs, monkeypatch):
    import transformers

    monkeypatch.setenv("KVINFER_QK_NORM_CUDA", "1")  # (q/k-norm: opt-in on CUDA until this passes on a GPU)

    gpu, cpu = load(model_dirs[name], "cuda:0"), load(model_dirs[name], "cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dirs[name], dtype=torch.float32).cuda().eval()
    for ids in well_conditioned(cpu):
        ours = gpu.generate(ids, GREEDY)[0].token_ids
        assert ours == cpu.generate(ids, GREEDY)[0].token_ids, name
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids], device="cuda"), max_new_tokens=40, do_sample=False,
                              eos_token_id=VOCAB + 1, pad_token_id=0)
        assert ours == ref[0, len(ids):].tolist(), name


@pytest.mark.parametrize("name", ["llama_gqa3", "gpt2", "qwen2", "qwen3", "llama_wide"])
def test_batch_of_eight_equals_eight_singles(name, model_dirs, monkeypatch):
    monkeypatch.setenv("KVINFER_QK_NORM_CUDA", "1")
    llm = load(model_dirs[name], "cuda:0")
    prompts = [prompt(n, 100 + n) for n in (1, 5, 17, 31, 64, 65, 100, 130)]
    batched = llm.generate(prompts, GREEDY)
    for p, b in zip(prompts, batched):
        assert b.token_ids == llm.generate(p, GREEDY)[0].token_ids


@pytest.mark.parametrize("name", list(CPU_ONLY))
def test_families_without_cuda_kernels_are_refused_by_name(name, tmp_path):
    folder = make_model(name, str(tmp_path / name))
    with pytest.raises(ValueError, match=r"Gemma2?ForCausalLM .*not yet implemented on CUDA.*device=\"cpu\""):
        load(folder, "cuda:0")
    assert load(folder, "cpu").generate(prompt(9, 1), GREEDY)[0].token_ids  # the CPU runs it


def test_logits_and_decode_steps_match_cpu(model_dirs):
    gpu, cpu = load(model_dirs["llama_mha_d128"], "cuda:0"), load(model_dirs["llama_mha_d128"], "cpu")
    ids = prompt(150, 7)
    g, c = gpu.logits(ids), cpu.logits(ids)
    assert g.shape == c.shape and np.isfinite(g).all()
    rel = np.abs(g - c).max() / np.abs(c).max()
    assert rel < 2e-2, rel  # fp16 activations on the GPU vs fp32 on the CPU
    # decode step by step on the GPU against the GPU's own prefill rows
    steps = decode_rows(gpu, ids, 50)
    err = np.abs(steps - g[49:]).max() / np.abs(g[49:]).max()
    assert err < 1e-2, err
    assert (steps.argmax(-1) == g[49:].argmax(-1)).mean() > 0.95


@pytest.mark.parametrize("prompt_mlp", ["0", "1"])
def test_a_long_prompt_step_matches_cpu_and_short_chunks(model_dirs, monkeypatch, prompt_mlp):
    """A 700-token prompt in one step (with KVINFER_PROMPT_MLP=1, on Hopper, its gate/up projection
    writes silu(gate) * up itself: prompt_mlp.h) against the CPU and against the same prompt in
    steps of 64 tokens (cuBLAS + silu_mul either way)."""
    monkeypatch.setenv("KVINFER_PROMPT_MLP", prompt_mlp)
    name = "llama_gqa3"
    long_ = load(model_dirs[name], "cuda:0", max_context=1024, max_step_tokens=1024)
    short = load(model_dirs[name], "cuda:0", max_context=1024, max_step_tokens=64)
    cpu = load(model_dirs[name], "cpu", max_context=1024, max_step_tokens=1024)
    ids = prompt(700, 17)
    g, s, c = long_.logits(ids), short.logits(ids), cpu.logits(ids)
    assert g.shape == s.shape == c.shape == (700, VOCAB) and np.isfinite(g).all()
    assert np.abs(g - c).max() / np.abs(c).max() < 2e-2  # fp16 activations on the GPU vs fp32 on the CPU
    assert np.abs(g - s).max() / np.abs(s).max() < 1e-2
    assert (g.argmax(-1) == s.argmax(-1)).mean() > 0.95


def test_sampling_is_deterministic_per_seed(model_dirs):
    llm = load(model_dirs["llama_gqa3"], "cuda:0")
    params = SamplingParams(max_tokens=24, temperature=0.9, top_k=50, top_p=0.95, min_p=0.01,
                            repetition_penalty=1.1, seed=1234, ignore_eos=True)
    a = llm.generate(prompt(12, 6), params)[0].token_ids
    assert a == llm.generate(prompt(12, 6), params)[0].token_ids
    assert a == llm.generate([prompt(12, 6), prompt(7, 7)], params)[0].token_ids


def test_memory_is_tracked_and_released(model_dirs):
    tracker = kvinfer.VramTracker()
    free0, _ = _core.cuda_mem_info(0)
    llm = LLM(model_dirs["llama_gqa3"], device="cuda:0", max_context=128, max_batch=2, tracker=tracker)
    report = tracker.report()["purposes"]
    assert {k: v["bytes"] for k, v in report.items()} == llm.plan.by_purpose()  # plan == allocation
    assert set(report) == {"weights", "kv_cache", "activations", "workspace"}
    assert report["kv_cache"]["bytes"] == kvinfer.KVCache.size_bytes(
        kvinfer.KVCacheConfig(llm.config.num_layers, 128, llm.config.num_kv_heads, llm.config.head_dim, 2))
    llm.close()
    assert tracker.total_bytes == 0
    free1, _ = _core.cuda_mem_info(0)
    assert free1 >= free0 - (8 << 20)


def decode_logits(llm: LLM, prompts: list[list[int]], slots: list[int], steps: int) -> np.ndarray:
    """[steps, len(prompts), vocab]: each prompt prefilled alone in its slot, then `steps` greedy
    decode steps of all of them together, each step's logits copied out."""
    from step_helpers import greedy_args

    r, V, B = llm.runner, llm.config.vocab_size, len(prompts)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    greedy = greedy_args(B)
    last = [int(r.step(np.asarray(p, np.int32), i32(0, len(p)), i32(0), i32(s), i32(len(p) - 1), greedy[:1])[0])
            for p, s in zip(prompts, slots)]
    cached = [len(p) for p in prompts]
    out = np.empty((steps, B, V), np.float32)
    for k in range(steps):
        toks = r.step(np.array(last, np.int32), np.arange(B + 1, dtype=np.int32), np.array(cached, np.int32),
                      np.array(slots, np.int32), np.arange(B, dtype=np.int32), greedy, logits=out[k])
        last, cached = toks.tolist(), [c + 1 for c in cached]
    assert np.isfinite(out).all()
    return out


def test_graph_replay_equals_op_by_op_bit_for_bit(model_dirs):
    """Decode steps replayed from the captured graphs (padded to the graph's batch) give the logits
    of the same steps run op by op, at batch sizes that fill a graph and that need padding, and
    again after the slots were refilled with sequences of other lengths."""
    g = load(model_dirs["llama_gqa3"], "cuda:0", max_batch=16, max_step_tokens=128)
    e = load(model_dirs["llama_gqa3"], "cuda:0", max_batch=16, max_step_tokens=128, cuda_graphs=False)
    assert g.graphs["batch_sizes"] == [1, 2, 4, 8, 16] and e.graphs["batch_sizes"] == []
    assert "5 decode batch sizes (up to 16)" in g.graphs_summary() and e.graphs_summary() is None
    for round_ in range(2):
        for B in (1, 2, 3, 5, 16):
            prompts = [prompt(5 + (37 * i + 11 * round_) % 90, 300 + 10 * round_ + i) for i in range(B)]
            slots = [(7 * i + round_) % 16 for i in range(B)]
            a, b = decode_logits(g, prompts, slots, 6), decode_logits(e, prompts, slots, 6)
            assert a.shape == b.shape == (6, B, VOCAB)
            assert np.array_equal(a, b), f"round {round_} batch {B}: max diff {np.abs(a - b).max()}"


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_graph_replay_equals_op_by_op_past_sixteen_rows(model_dirs, batch_invariant):
    """The graphs of 24-64 rows (past the 16 rows where the Hopper kernel's fusions stop, and with
    batch invariance given up) replay the op-by-op step's logits bit for bit, after refills too."""
    kw = dict(max_batch=64, max_step_tokens=128, batch_invariant=batch_invariant)
    g = load(model_dirs["llama_gqa3"], "cuda:0", **kw)
    e = load(model_dirs["llama_gqa3"], "cuda:0", cuda_graphs=False, **kw)
    assert g.graphs["batch_sizes"][-4:] == [24, 32, 48, 64]
    for round_ in range(2):
        for B in (17, 24, 30, 48, 64):
            prompts = [prompt(3 + (29 * i + 13 * round_) % 70, 600 + 10 * round_ + i) for i in range(B)]
            slots = [(11 * i + 5 * round_) % 64 for i in range(B)]
            a, b = decode_logits(g, prompts, slots, 3), decode_logits(e, prompts, slots, 3)
            assert a.shape == b.shape == (3, B, VOCAB)
            assert np.array_equal(a, b), f"round {round_} batch {B}: max diff {np.abs(a - b).max()}"


def run_prompt_steps(llm, steps, snapshots=None) -> list[np.ndarray]:
    """Runs prompt steps (tokens, query_starts, cached lengths, slots, logit rows; greedy where rows
    are sampled, else nothing sampled) on the runner; their logits. With `snapshots`, each step's
    K/V cache before and after it ([layer][slot] K and V of every position) is appended."""
    from step_helpers import greedy_args

    r, V = llm.runner, llm.config.vocab_size
    out = []
    for tokens, starts, cached, slots, rows in steps:
        before = cache_snapshot(llm) if snapshots is not None else None
        i32 = lambda v: np.asarray(v, np.int32)  # noqa: E731
        if rows:
            logits = np.empty((len(rows), V), np.float32)
            r.step(i32(tokens), i32(starts), i32(cached), i32(slots), i32(rows), greedy_args(len(rows)), logits=logits)
            assert np.isfinite(logits).all()
            out.append(logits)
        else:
            r.step(i32(tokens), i32(starts), i32(cached), i32(slots), i32([]))
        if snapshots is not None:
            snapshots.append((before, cache_snapshot(llm)))
    return out


def cache_snapshot(llm) -> np.ndarray:
    c = llm.runner.cache
    L, S, P = llm.config.num_layers, llm.max_batch, llm.max_context
    return np.stack([np.stack([np.stack([c.read(layer, slot, P, keys) for keys in (True, False)])
                               for slot in range(S)]) for layer in range(L)])  # [L][S][2][P][kv][d]


@pytest.mark.parametrize("name", ["llama_gqa3", "llama_mha_d128", "gpt2", "qwen3"])
def test_prompt_graphs_replay_op_by_op_bits_and_keep_nothing_of_padding(name, model_dirs, monkeypatch):
    """Prompt steps of more than 64 tokens run padded to a ladder of token counts (here 128, 192 and
    256) and replay the graph captured for their shape, its attention launches resized to the
    step's sequences. Their logits equal the same steps op by op (graphs off, padded alike) bit for
    bit and the fp32 CPU reference within fp16 rounding; a step changes the K/V cache only at its
    own tokens' positions (padding tokens, position -1, write nothing), and a decode step after
    them agrees too. One prompt of 200 tokens, two in one step (2 sampled rows: the max_batch
    graph), a chunk that samples nothing, then a chunk after its 100 cached tokens. RoPE with GQA
    at head_dim 64, head_dim 128, GPT-2's learned positions and Qwen3's q/k-norm."""
    from step_helpers import greedy_args

    monkeypatch.setenv("KVINFER_QK_NORM_CUDA", "1")

    kw = dict(max_batch=4, max_step_tokens=256)
    g, e, cpu = (load(model_dirs[name], "cuda:0", **kw), load(model_dirs[name], "cuda:0", cuda_graphs=False, **kw),
                 load(model_dirs[name], "cpu", **kw))
    assert g.graphs["prompt_tokens"] == [128, 192, 256] and e.graphs["prompt_tokens"] == []
    a, b, c, d = prompt(200, 31), prompt(70, 32), prompt(50, 33), prompt(190, 34)
    steps = [(a, [0, 200], [0], [0], [199]),
             (b + c, [0, 70, 120], [0, 0], [1, 2], [69, 119]),
             (d[:100], [0, 100], [0], [3], []),
             (d[100:], [0, 90], [100], [3], [89])]
    snapshots = []
    got = run_prompt_steps(g, steps, snapshots)
    want, ref = run_prompt_steps(e, steps), run_prompt_steps(cpu, steps)
    for i, (x, y, z) in enumerate(zip(got, want, ref)):
        assert x.shape == y.shape == z.shape
        assert np.array_equal(x, y), f"{name} step {i}: max diff {np.abs(x - y).max()}"
        rel = np.abs(x - z).max() / np.abs(z).max()
        assert rel < 2e-2, f"{name} step {i}: {rel} from the CPU reference"
    for (before, after), (tokens, starts, cached, slots, _) in zip(snapshots, steps):
        changed = np.zeros(before.shape[:4], bool)  # [L][S][2][P]
        for q, slot in enumerate(slots):
            changed[:, slot, :, cached[q]:cached[q] + starts[q + 1] - starts[q]] = True
        assert np.array_equal(before[~changed], after[~changed]), f"{name}: a step wrote K/V outside its tokens"
        assert not np.array_equal(before[changed], after[changed])
    decode = [(np.asarray([5, 6, 7, 8], np.int32), np.arange(5, dtype=np.int32),
               np.asarray([200, 70, 50, 190], np.int32), np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32))]
    rows = []
    for llm in (g, e, cpu):
        out = np.empty((4, llm.config.vocab_size), np.float32)
        llm.runner.step(*decode[0], greedy_args(4), logits=out)
        rows.append(out)
    assert np.array_equal(rows[0], rows[1]), f"{name}: decode after prompt graphs {np.abs(rows[0] - rows[1]).max()}"
    assert np.abs(rows[0] - rows[2]).max() / np.abs(rows[2]).max() < 2e-2
    # seeded sampling with a repetition penalty (it reads the slots' token history, which padding
    # must not touch) in a padded prompt step of 3 sampled rows, then in a decode step
    sampled = []
    for llm in (g, e):
        args = greedy_args(3)
        args["temperature"], args["repetition_penalty"], args["seed"] = 0.8, 1.3, [5, 6, 7]
        i32 = lambda v: np.asarray(v, np.int32)  # noqa: E731
        first = llm.runner.step(i32(prompt(70, 35) + prompt(60, 36) + prompt(30, 37)), i32([0, 70, 130, 160]),
                                i32([0, 0, 0]), i32([0, 1, 2]), i32([69, 129, 159]), args)
        args["step"] = 1
        then = llm.runner.step(i32(first), i32([0, 1, 2, 3]), i32([70, 60, 30]), i32([0, 1, 2]), i32([0, 1, 2]), args)
        sampled.append((first.tolist(), then.tolist()))
    assert sampled[0] == sampled[1], f"{name}: seeded, penalised sampling differs between graph and op by op"


@pytest.mark.parametrize("prompt_mlp", ["0", "1"])
def test_prompt_graph_of_2048_tokens_takes_the_192_row_kernel_with_the_same_bits(model_dirs, monkeypatch, prompt_mlp):
    """At head_dim 64 the graph of 2048 tokens captures the 192-row attention kernel (chosen for the
    longest sequence the step may hold) and resizes it to the step's sequences; op by op, the
    step's 1048-token sequence takes the 128-row kernel. The two give the same bits, also with the
    fused gate/up projection (KVINFER_PROMPT_MLP=1), captured for the padded step's rows."""
    monkeypatch.setenv("KVINFER_PROMPT_MLP", prompt_mlp)
    try:
        from kvinfer import _bench_ops
        hopper = _bench_ops.prefill_ws_available(64)
    except ImportError:  # a build without the benchmark ops: the device says
        hopper = torch.cuda.get_device_capability() == (9, 0)
    if not hopper:
        pytest.skip("the warp-specialised prefill kernels need an sm_90a build on a compute capability 9.0 GPU")
    kw = dict(max_batch=2, max_context=2048, max_step_tokens=2048)
    g, e = load(model_dirs["llama_gqa3"], "cuda:0", **kw), load(model_dirs["llama_gqa3"], "cuda:0", cuda_graphs=False, **kw)
    assert g.graphs["prompt_tokens"][-4:] == [1664, 1792, 1920, 2048]
    a, b = prompt(1000, 41), prompt(1048, 42)
    steps = [(a + b, [0, 1000, 2048], [0, 0], [0, 1], [999, 2047]), (prompt(1300, 43), [0, 1300], [0], [0], [1299])]
    for i, (x, y) in enumerate(zip(run_prompt_steps(g, steps), run_prompt_steps(e, steps))):
        assert x.shape == y.shape and np.array_equal(x, y), f"step {i}: max diff {np.abs(x - y).max()}"


def test_decode_is_batch_invariant_bit_for_bit(model_dirs):
    """A sequence's decode logits are the same bits alone and among 2, 15 and 63 others of mixed
    lengths (the reduction order of every GEMM and of attention does not depend on the batch)."""
    llm = load(model_dirs["llama_mha_d128"], "cuda:0", max_batch=64, max_context=256, max_step_tokens=256)
    target = prompt(40, 500)
    alone = decode_logits(llm, [target], [0], 5)[:, 0]
    for B in (3, 16, 64):
        others = [prompt(3 + (29 * i) % 150, 600 + i) for i in range(B - 1)]
        batch = decode_logits(llm, others[: B // 2] + [target] + others[B // 2:], list(range(B)), 5)
        assert np.array_equal(batch[:, B // 2], alone), f"batch {B}: max diff {np.abs(batch[:, B // 2] - alone).max()}"


def test_a_mixed_step_attends_like_a_decode_step_and_a_prompt_step(model_dirs):
    """batch_invariant=False, steps of three one-token sequences and then prompt chunks (a mixed
    step as the scheduler builds it, decodes first). The one-token rows take the decode kernel: in a
    step of under 16 rows (the per-row skinny GEMMs of a decode step) their logits are the decode
    step's bits, which the prefill kernel would not give. The chunks (one continuing a cached
    prompt, one new) stay within fp16 rounding of the same chunk alone, in small and in cuBLAS-sized
    steps. Head_dim 64 with GQA, head_dim 128 with MHA."""
    from step_helpers import greedy_args

    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731

    def close(got, want, what):
        assert np.isfinite(got).all() and got.shape == want.shape, what
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < 1e-2, f"{what}: {rel}"

    for name in ("llama_gqa3", "llama_mha_d128"):
        llm = load(model_dirs[name], "cuda:0", batch_invariant=False, max_step_tokens=128)
        r, V = llm.runner, llm.config.vocab_size
        prompts = [prompt(n, 900 + n) for n in (20, 45, 70)]
        last = [int(r.step(np.asarray(p, np.int32), i32(0, len(p)), i32(0), i32(s), i32(len(p) - 1), greedy_args(1))[0])
                for s, p in enumerate(prompts)]
        cached = [len(p) for p in prompts]
        decode = np.empty((3, V), np.float32)
        r.step(np.array(last, np.int32), i32(0, 1, 2, 3), np.array(cached, np.int32), i32(0, 1, 2), i32(0, 1, 2),
               greedy_args(3), logits=decode)
        head = prompt(10, 960)  # slot 3: 6 tokens cached, then a chunk of 4 beside the decodes (7 rows)
        r.step(np.array(head[:6], np.int32), i32(0, 6), i32(0), i32(3), i32(5), greedy_args(1))
        small = np.empty((4, V), np.float32)
        r.step(np.array(last + head[6:], np.int32), i32(0, 1, 2, 3, 7), np.array(cached + [6], np.int32),
               i32(0, 1, 2, 3), i32(0, 1, 2, 6), greedy_args(4), logits=small)
        assert np.array_equal(small[:3], decode), f"{name}: {np.abs(small[:3] - decode).max()}"
        alone = np.empty((1, V), np.float32)
        r.step(np.array(head[6:], np.int32), i32(0, 4), i32(6), i32(3), i32(3), greedy_args(1), logits=alone)
        close(small[3:], alone, f"{name}: a chunk after cached tokens")
        # 3 + 30 rows (cuBLAS): the decode rows again, then a new 30-token chunk in slot 4
        chunk = prompt(30, 950)
        large = np.empty((4, V), np.float32)
        r.step(np.array(last + chunk, np.int32), i32(0, 1, 2, 3, 33), np.array(cached + [0], np.int32),
               i32(0, 1, 2, 4), i32(0, 1, 2, 32), greedy_args(4), logits=large)
        close(large[:3], decode, f"{name}: decode rows in a large mixed step")
        r.step(np.array(chunk, np.int32), i32(0, 30), i32(0), i32(5), i32(29), greedy_args(1), logits=alone)
        close(large[3:], alone, f"{name}: a new chunk in a large mixed step")
        llm.close()


def test_without_batch_invariance_batches_stay_close(model_dirs):
    """batch_invariant=False: steps of 16 sequences and more take cuBLAS (replayed from graphs
    too). Their logits must stay within fp16 rounding of the batch-invariant ones, and a greedy
    batch of 16 must still give every sequence the tokens it gets alone."""
    folder = model_dirs["llama_wide"]
    fast = load(folder, "cuda:0", max_batch=16, max_step_tokens=256, batch_invariant=False)
    exact = load(folder, "cuda:0", max_batch=16, max_step_tokens=256)
    assert fast.graphs["batch_sizes"] == exact.graphs["batch_sizes"]
    # prompts under 16 tokens are prefilled alike either way (the skinny GEMMs), so the first
    # decode step of the 16 gets the same inputs; later steps may pick other tokens at near-ties
    prompts = [prompt(3 + (5 * i) % 12, 700 + i) for i in range(16)]
    a, b = decode_logits(fast, prompts, list(range(16)), 1), decode_logits(exact, prompts, list(range(16)), 1)
    assert a.shape == b.shape == (1, 16, VOCAB)
    rel = np.abs(a - b).max() / np.abs(b).max()
    assert 0 < rel < 1e-2, rel  # 0 would mean the option changed nothing
    cpu = load(folder, "cpu", max_batch=16, max_step_tokens=256)
    chosen = well_conditioned(cpu, count=2)
    batch = chosen + [prompt(5 + i, 800 + i) for i in range(14)]
    outs = fast.generate(batch, GREEDY)
    for ids, out in zip(chosen, outs):
        assert out.token_ids == cpu.generate(ids, GREEDY)[0].token_ids
