"""GPU benchmark, one command on the GPU machine; prints a table (and writes it with --out).

1. decode attention vs torch SDPA on the same K/V tensors (our cache layout [slot][kv_head][pos][d]
   is SDPA's [B, Hkv, S, D]): us, GB/s (K+V bytes read / time), ratio.
2. causal prefill attention vs SDPA: TFLOP/s (4 * S^2 * D * Hq / 2) and % of the fp16 tensor-core rate
   measured in the same run (cuBLAS, 8192^3), ratio.
3. end-to-end greedy decode tokens/s (128-token prompts, 256 new tokens) at batch 1, 16 and 64 with
   random weights of Llama-3.2-1B and SmolLM2-135M shapes, with and without CUDA graphs, as % of the
   copy roofline (weights + K/V bytes per step at the measured copy rate), vs HF generate with a
   static cache, eager and (--compiled) with torch.compile; plus time to first token for a
   2048-token prompt.
CUDA events, warm-up first, medians; the L2 cache is flushed before every timed kernel call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import kvinfer
from kvinfer import _bench_ops  # built with KVINFER_BENCH_OPS=ON (benchmarks/gpu_env.sh)

LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


_L2_FLUSH: list[torch.Tensor] = []
FLUSH_MODE = ["read"]
LENGTHS_HINT = [True]  # decode: pass max_keys / total_keys to attention_decode


def flush_l2() -> None:
    """Reads 256 MB (5x the H100's L2), so the next call starts with a cold cache, as it does between
    layers of a real decode step; the GPU is also busy while the next call is enqueued, so its
    launch latency is not timed. Reading leaves L2 full of clean lines, as the GEMMs before attention
    do (they read weights). `--flush write` writes the 256 MB instead: then the next call also pays for
    writing back the ~50 MB of dirty lines that it evicts (the method of the earlier tables)."""
    if not _L2_FLUSH:
        _L2_FLUSH.append(torch.zeros(128 << 20, dtype=torch.float16, device="cuda"))
    if FLUSH_MODE[0] == "write":
        _L2_FLUSH[0].zero_()
    else:
        _L2_FLUSH[0].sum()


def paired_time_us(fa, fb, reps: int = 30, warmup: int = 5) -> tuple[float, float]:
    """Medians of CUDA-event times of fa and fb (each after an L2 flush), measured alternately so
    that clock and thermal drift hit both alike."""
    for _ in range(warmup):
        fa()
        fb()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(reps):
        for fn, out in ((fa, times[0]), (fb, times[1])):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            flush_l2()
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_decode(B: int, hq: int, hkv: int, D: int, ctx: int, splits: tuple[int, ...] | None = None) -> None:
    k = torch.randn(B, hkv, ctx, D, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    q = torch.randn(B, hq, 1, D, device="cuda", dtype=torch.float16)
    scale = D ** -0.5
    slots = torch.arange(B, device="cuda", dtype=torch.int32)
    positions = torch.full((B,), ctx - 1, device="cuda", dtype=torch.int32)
    partial = torch.zeros(_bench_ops.decode_workspace_bytes(B, hq, D) // 4, device="cuda", dtype=torch.float32)
    out = torch.empty(B, hq * D, device="cuda", dtype=torch.float16)
    stream = torch.cuda.current_stream().cuda_stream

    def ours():
        _bench_ops.attention_decode(q.data_ptr(), hq * D, k.data_ptr(), v.data_ptr(), hkv * ctx * D, ctx * D, D,
                                   slots.data_ptr(), positions.data_ptr(), B, hq, hkv, D, scale,
                                   partial.data_ptr(), out.data_ptr(), hq * D, stream, *(splits or ()),
                                   max_keys=ctx if LENGTHS_HINT[0] else 0, total_keys=B * ctx)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=hkv != hq)

    ours()
    ref = sdpa().reshape(B, hq * D)
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    t_ours, t_sdpa = paired_time_us(ours, sdpa, reps=50)
    gb = 2 * k.numel() * 2 / 1e9
    tag = f" splits{splits}" if splits else ""
    say(f"| decode{tag} | B={B} Hq/Hkv={hq}/{hkv} D={D} ctx={ctx} | {t_ours:9.1f} | {gb / t_ours * 1e6:7.0f} | "
        f"{t_sdpa:9.1f} | {gb / t_sdpa * 1e6:7.0f} | {t_sdpa / t_ours:5.2f} | {err:.1e} |")


def prefill_case(S: int, D: int, hq: int, hkv: int, kernel: str):
    """One causal prefill of S random tokens (one sequence, no cache before it): q [S, Hq, D], k and
    v [1, Hkv, S, D] (SDPA's layout, our cache's too), out [S, Hq * D], and a call of our kernel
    that writes out."""
    q = torch.randn(S, hq, D, device="cuda", dtype=torch.float16)
    k = torch.randn(1, hkv, S, D, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    out = torch.empty(S, hq * D, device="cuda", dtype=torch.float16)
    zero = torch.zeros(1, device="cuda", dtype=torch.int32)
    starts = torch.tensor([0, S], device="cuda", dtype=torch.int32)
    positions = torch.arange(S, device="cuda", dtype=torch.int32)
    stream = torch.cuda.current_stream().cuda_stream

    def ours():
        _bench_ops.attention_prefill(q.data_ptr(), hq * D, k.data_ptr(), v.data_ptr(), hkv * S * D, S * D, D,
                                    zero.data_ptr(), starts.data_ptr(), positions.data_ptr(), 1, S, hq, hkv, D,
                                    D ** -0.5, out.data_ptr(), hq * D, stream, kernel)
    return q, k, v, out, ours


def bench_prefill(S: int, D: int, hq: int = 32, hkv: int = 8, kernel: str = "auto") -> None:
    q, k, v, out, ours = prefill_case(S, D, hq, hkv, kernel)
    scale = D ** -0.5
    qt = q.permute(1, 0, 2).unsqueeze(0)  # [1, Hq, S, D] view

    def sdpa():
        return F.scaled_dot_product_attention(qt, k, v, is_causal=True, scale=scale, enable_gqa=True)

    ours()
    ref = sdpa()[0].permute(1, 0, 2).reshape(S, hq * D)
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    t_ours, t_sdpa = paired_time_us(ours, sdpa, reps=10)
    flops = 4 * S * S * D * hq / 2
    peak = tensor_core_rate()
    say(f"| prefill {kernel} | S={S} D={D} Hq/Hkv={hq}/{hkv} | {t_ours:9.1f} | {flops / t_ours / 1e6:7.1f} | "
        f"{100 * flops / t_ours / 1e6 / peak:5.1f}% | {t_sdpa:9.1f} | {flops / t_sdpa / 1e6:7.1f} | "
        f"{100 * flops / t_sdpa / 1e6 / peak:5.1f}% | {t_sdpa / t_ours:5.2f} | {err:.1e} |")


_TC_RATE: list[float] = []


def tensor_core_rate() -> float:
    """TFLOP/s of an 8192^3 fp16 matrix product (cuBLAS) on random data, measured once per run: the
    ceiling the attention rows are a percentage of."""
    if not _TC_RATE:
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.float16)
        b = torch.randn(n, n, device="cuda", dtype=torch.float16)
        for _ in range(3):
            torch.mm(a, b)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(10):
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        _TC_RATE.append(2 * n ** 3 / statistics.median(times) / 1e12)
        say(f"# fp16 tensor-core rate (cuBLAS 8192^3, median of 10): {_TC_RATE[0]:.1f} TFLOP/s")
    return _TC_RATE[0]


def bench_gemm(name: str, N: int, K: int, M: int, kernel: str = "auto") -> None:
    """Our skinny GEMM (fp16 in and out; `kernel`: auto, narrow, wide (the same bits) or wgmma)
    against torch.mm (cuBLAS) on the same tensors: us, weight GB/s and % of the copy rate."""
    w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.05
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    y = torch.empty(M, N, device="cuda", dtype=torch.float16)
    floats, counters = _bench_ops.skinny_workspace(N, K)
    part = torch.empty(max(floats, 1), device="cuda", dtype=torch.float32)
    cnt = torch.zeros(max(counters, 1), device="cuda", dtype=torch.int32)
    stream = torch.cuda.current_stream().cuda_stream

    def ours():
        _bench_ops.skinny_gemm(w.data_ptr(), N, K, M, x.data_ptr(), K, y.data_ptr(), N, part.data_ptr(),
                               cnt.data_ptr(), stream, kernel)

    def cublas():
        return torch.mm(x, w.t())

    ours()
    ref = cublas()
    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    t_ours, t_ref = paired_time_us(ours, cublas, reps=30)
    gb = N * K * 2 / 1e9
    op = "gemm" if kernel == "auto" else f"gemm {kernel}"
    say(f"| {op} | {name} N={N} K={K} M={M} | {t_ours:8.1f} | {gb / t_ours * 1e6:6.0f} | "
        f"{100 * gb / t_ours * 1e15 / COPY_BW:5.1f}% | {t_ref:8.1f} | {gb / t_ref * 1e6:6.0f} | {t_ref / t_ours:5.2f} | {err:.1e} |")


GEMM_SHAPES = {
    "Llama-3.2-1B": {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192),
                     "lm_head": (128256, 2048)},
    "SmolLM2-135M": {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
                     "lm_head": (49152, 576)},
}


SHAPES = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=4096),
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=4096),
}


def random_model(name: str, folder: str) -> None:
    import os
    import sys

    import transformers

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
    from tiny_models import make_tokenizer

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(rope_theta=500000.0, **SHAPES[name])
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(cfg).half()
    model.save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)
    del model
    torch.cuda.empty_cache()


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


class _StepClock:
    """A generate() streamer that timestamps each step (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def hf_rates(hf, ids, new_tokens: int, compiled: bool) -> tuple[float, float]:
    """(decode tok/s, seconds to the first token) of one HF generate call with a static cache,
    after an identical warm-up call (which pays any compilation)."""
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
              do_sample=False, cache_implementation="static", pad_token_id=0, disable_compile=not compiled)
    hf.generate(ids, **kw)
    clock = _StepClock()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    hf.generate(ids, streamer=clock, **kw)
    first, last = clock.times[1], clock.times[-1]
    return ids.shape[0] * (new_tokens - 1) / (last - first), first - t0


COPY_BW = 4.24e12  # bytes/s read + write, the H200's measured device-to-device copy rate


def roofline_tps(llm, batch: int, context: int) -> float:
    """Tokens/s if a decode step only moved its bytes at the copy rate: every weight once, plus each
    sequence's K/V at the mean context."""
    c = llm.config
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2 * context * batch
    return batch * COPY_BW / (llm.plan.weights_bytes + kv)


def bench_e2e(name: str, new_tokens: int, compiled_batches: tuple[int, ...], batches: tuple[int, ...],
              batch_invariant: bool = True, peers: bool = True) -> None:
    import transformers

    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    folder = tempfile.mkdtemp(prefix=name)
    random_model(name, folder)
    vocab = SHAPES[name]["vocab_size"]
    rng = np.random.default_rng(0)
    kw = dict(device="cuda:0", max_context=2048 + 8, max_batch=max(batches), max_step_tokens=2048,
              batch_invariant=batch_invariant)
    tag = "" if batch_invariant else " (not batch-invariant)"
    tag += "".join(f" ({k}={os.environ[k]})" for k in ("KVINFER_SKINNY", "KVINFER_PREFILL") if k in os.environ)
    llm = LLM(folder, **kw)
    eager_llm = LLM(folder, cuda_graphs=False, **kw) if peers else None
    say(f"# {name}: graphs for batch {llm.graphs['batch_sizes']} and prompts of {llm.graphs['prompt_tokens']} tokens "
        f"captured in {llm.graphs['capture_seconds']:.2f} s, "
        f"{llm.graphs['device_bytes']:,} B of device memory")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16).cuda().eval() if peers else None
    for B in batches:
        prompts = [rng.integers(0, vocab, size=128).tolist() for _ in range(B)]
        ids = torch.tensor(prompts, device="cuda")

        def rate(model):
            def run(n):
                return lambda: model.generate(prompts, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
            run(8)()  # warm-up
            o1, oN = timed(run(1)), timed(run(new_tokens))
            return B * (new_tokens - 1) / (oN - o1)

        ours = rate(llm)
        roof = roofline_tps(llm, B, 128 + new_tokens // 2)
        if not peers:
            say(f"| e2e decode{tag} | {name} B={B} | {ours:9.1f} | {100 * ours / roof:5.1f}% | | | | | |")
            continue
        ours_eager = rate(eager_llm)
        hf_eager, _ = hf_rates(hf, ids, new_tokens, compiled=False)
        line = (f"| e2e decode{tag} | {name} B={B} | {ours:9.1f} | {100 * ours / roof:5.1f}% | {ours_eager:9.1f} | "
                f"{hf_eager:9.1f} | {ours / hf_eager:5.2f} |")
        if B in compiled_batches:
            try:
                comp, _ = hf_rates(hf, ids, new_tokens, compiled=True)
                line += f" {comp:9.1f} | {ours / comp:5.2f} |"
            except Exception as e:  # noqa: BLE001 - the peer's failure is reported, not hidden
                line += f" failed: {type(e).__name__}: {str(e)[:120]} | |"
        else:
            line += " | |"
        say(line)
    longs = [[rng.integers(0, vocab, size=2048).tolist()] for _ in range(6)]  # new ones: no prefix-cache hit
    lid = torch.tensor(longs[0], device="cuda")
    llm.generate(longs[0], SamplingParams(max_tokens=1, temperature=0))
    t_ours = statistics.median(timed(lambda p=p: llm.generate(p, SamplingParams(max_tokens=1, temperature=0)))
                               for p in longs[1:])
    if peers:
        _, t_hf = hf_rates(hf, lid, 2, compiled=False)
        say(f"| TTFT 2048{tag} | {name} B=1 | {t_ours * 1e3:7.1f} ms | | | {t_hf * 1e3:7.1f} ms | {t_hf / t_ours:5.2f} | | |")
        eager_llm.close()
    else:
        say(f"| TTFT 2048{tag} | {name} B=1 | {t_ours * 1e3:7.1f} ms | | | | | | |")
    llm.close()
    del hf
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["gemm", "decode", "prefill", "e2e"])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--compiled", nargs="*", type=int, default=None, metavar="BATCH",
                    help="also HF with torch.compile at these batch sizes (default 1; slow to warm up)")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64], help="end-to-end batch sizes")
    ap.add_argument("--gemm-rows", nargs="*", type=int, default=[1, 16, 64], help="GEMM micro-benchmark rows")
    ap.add_argument("--models", nargs="*", default=list(SHAPES), choices=list(SHAPES), help="end-to-end models")
    ap.add_argument("--gemm-kernels", action="store_true",
                    help="time each skinny kernel: narrow, wide (above 8 rows), wgmma (Hopper); else the one chosen")
    ap.add_argument("--sweep-splits", nargs="*", metavar="MIN_CHUNK,MAX_SPLITS[,GROWTH_KEYS[,MIN_SPLITS]]",
                    help="decode: also time these chunkings (default: a few) at every decode shape")
    ap.add_argument("--flush", choices=["read", "write"], default="read",
                    help="how the L2 is emptied before each timed call (see flush_l2)")
    ap.add_argument("--no-peers", action="store_true",
                    help="end to end: ours with graphs only (no run without graphs, no HF transformers)")
    ap.add_argument("--no-batch-invariant", action="store_true",
                    help="end to end: LLM(batch_invariant=False), cuBLAS for decode steps of 16+ sequences")
    ap.add_argument("--no-lengths-hint", action="store_true",
                    help="decode: do not tell attention_decode the lengths (always the persistent grid)")
    args = ap.parse_args()
    FLUSH_MODE[0] = args.flush
    LENGTHS_HINT[0] = not args.no_lengths_hint
    say(f"# {torch.cuda.get_device_name()}, {datetime.date.today()}, torch {torch.__version__}, "
        f"kvinfer {kvinfer.__version__}, L2 flush: {args.flush}")
    for _ in range(400):  # ~100 GB moved first (~40 ms), so that the clocks are up for the first shape
        flush_l2()
    torch.cuda.synchronize()
    def gemm_kernels(M):
        return ("narrow",) + (("wide",) if M > 8 else ()) + (("wgmma",) if _bench_ops.skinny_wgmma_available() else ())

    if "gemm" not in args.skip:
        say("| op | shape | ours us | ours GB/s | % of copy | cuBLAS us | cuBLAS GB/s | speed-up | rel. err |")
        say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for model, shapes in GEMM_SHAPES.items():
            for M in args.gemm_rows:
                for part, (N, K) in shapes.items():
                    for kernel in gemm_kernels(M) if args.gemm_kernels else ("auto",):
                        bench_gemm(f"{model} {part}", N, K, M, kernel)
    if "decode" not in args.skip:
        say("| op | shape | ours us | ours GB/s | SDPA us | SDPA GB/s | speed-up | rel. err |")
        say("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for B in (1, 8, 64):
            for ctx in (1024, 8192, 32768):
                bench_decode(B, 32, 8, 128, ctx)
        for B in (1, 16):
            bench_decode(B, 9, 3, 64, 2048)
        bench_decode(128, 32, 8, 128, 1024)  # beyond the shapes: larger batches
        bench_decode(64, 9, 3, 64, 2048)
    if args.sweep_splits is not None:
        sweep = [tuple(map(int, x.split(","))) for x in args.sweep_splits] or [(128, 32), (256, 32, 0), (512, 32)]
        for splits in sweep:
            for B in (1, 8, 64):
                for ctx in (1024, 8192, 32768):
                    bench_decode(B, 32, 8, 128, ctx, splits)
            for B in (1, 16):
                bench_decode(B, 9, 3, 64, 2048, splits)
    if "prefill" not in args.skip:
        tensor_core_rate()
        say("| op | shape | ours us | ours TFLOP/s | % of TC | SDPA us | SDPA TFLOP/s | % of TC | speed-up | rel. err |")
        say("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for D in (64, 128):
            kernels = (("mma", "ws", "ws_overlap") + (("ws_overlap_192",) if D == 64 else ())
                       if _bench_ops.prefill_ws_available(D) else ("mma",))
            for S in (1024, 4096, 16384):
                for kernel in kernels:
                    bench_prefill(S, D, kernel=kernel)
    if "e2e" not in args.skip:
        compiled = tuple(args.compiled or [1]) if args.compiled is not None else ()
        say("| run | model | ours tok/s | % of copy roofline | ours, no graphs | HF static (eager) tok/s | ratio | "
            "HF static (compiled) tok/s | ratio |")
        say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in args.models:
            bench_e2e(name, args.new_tokens, compiled, tuple(args.batches), not args.no_batch_invariant,
                      peers=not args.no_peers)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
