"""One causal prefill shape through one kernel, a few calls: the target of a kernel profiler run
(gpu_check.sh stage ncu), where gpu_bench.py would profile hundreds of kernels.

    python benchmarks/prefill_one.py --seq 16384 --head-dim 128 --kernel ws_overlap [--calls 3]
"""

from __future__ import annotations

import argparse

import torch

from kvinfer import _bench_ops  # built with KVINFER_BENCH_OPS=ON (benchmarks/gpu_env.sh)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128))
    ap.add_argument("--heads", type=int, nargs=2, default=(32, 8), metavar=("HQ", "HKV"))
    ap.add_argument("--kernel", default="auto", choices=("auto", "mma", "ws", "ws_overlap", "ws_overlap_192"))
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    S, D, (hq, hkv) = args.seq, args.head_dim, args.heads
    q = torch.randn(S, hq, D, device="cuda", dtype=torch.float16)
    k = torch.randn(1, hkv, S, D, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    out = torch.empty(S, hq * D, device="cuda", dtype=torch.float16)
    zero = torch.zeros(1, device="cuda", dtype=torch.int32)
    starts = torch.tensor([0, S], device="cuda", dtype=torch.int32)
    positions = torch.arange(S, device="cuda", dtype=torch.int32)
    stream = torch.cuda.current_stream().cuda_stream
    for _ in range(args.calls):
        _bench_ops.attention_prefill(q.data_ptr(), hq * D, k.data_ptr(), v.data_ptr(), hkv * S * D, S * D, D,
                                     zero.data_ptr(), starts.data_ptr(), positions.data_ptr(), 1, S, hq, hkv, D,
                                     D ** -0.5, out.data_ptr(), hq * D, stream, args.kernel)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "non-finite output"
    print(f"prefill S={S} D={D} Hq/Hkv={hq}/{hkv} kernel={args.kernel}: {args.calls} calls done")


if __name__ == "__main__":
    main()
