"""One causal prefill shape through one kernel, a few calls: the target of a kernel profiler run
(gpu_check.sh stage ncu), where gpu_bench.py would profile hundreds of kernels.

    python benchmarks/prefill_one.py --seq 16384 --head-dim 128 --kernel ws_overlap [--calls 3]

--kernel sdpa runs torch's scaled_dot_product_attention on the same tensors instead (the peer's
kernel, profiled the same way).
"""

from __future__ import annotations

import argparse

import torch

from gpu_bench import prefill_case


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128))
    ap.add_argument("--heads", type=int, nargs=2, default=(32, 8), metavar=("HQ", "HKV"))
    ap.add_argument("--kernel", default="auto", choices=("auto", "mma", "ws", "ws_overlap", "ws_overlap_192", "sdpa"))
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    S, D, (hq, hkv) = args.seq, args.head_dim, args.heads
    q, k, v, out, ours = prefill_case(S, D, hq, hkv, "auto" if args.kernel == "sdpa" else args.kernel)
    if args.kernel == "sdpa":
        qt = q.permute(1, 0, 2).unsqueeze(0)  # [1, Hq, S, D] view, as gpu_bench.py's SDPA rows

        def ours():  # noqa: F811 - the peer in our place
            o = torch.nn.functional.scaled_dot_product_attention(qt, k, v, is_causal=True, scale=D ** -0.5,
                                                                 enable_gqa=True)
            out.copy_(o[0].permute(1, 0, 2).reshape(S, hq * D))
    for _ in range(args.calls):
        ours()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "non-finite output"
    print(f"prefill S={S} D={D} Hq/Hkv={hq}/{hkv} kernel={args.kernel}: {args.calls} calls done")


if __name__ == "__main__":
    main()
