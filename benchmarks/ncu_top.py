"""Where a kernel's warps wait, from ncu's source page: the stall reasons over the whole kernel,
the instructions with the most warp-stall samples, and the executed-instruction mix by opcode.

    ncu ... --section WarpStateStats --section SourceCounters -o rep python3 ...
    ncu --import rep.ncu-rep --page source --csv --print-source sass > rep.csv
    python benchmarks/ncu_top.py rep.csv [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import csv


def number(text: str) -> float:
    try:
        return float(text.replace(",", "") or 0)
    except ValueError:
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    with open(args.csv, errors="replace") as f:
        rows = list(csv.reader(f))
    at = next(i for i, r in enumerate(rows) if "Source" in r)  # a kernel-name line may come first
    header = rows[at]
    source = header.index("Source")
    samples = header.index("Warp Stall Sampling (All Samples)")
    executed = header.index("Instructions Executed")
    reasons = [(i, h) for i, h in enumerate(header) if h.startswith("stall_") and "Not Issued" not in h]
    lines = [r for r in rows[at + 1:] if len(r) == len(header) and r[source].strip()]
    total = sum(number(r[samples]) for r in lines) or 1.0
    by_reason = collections.Counter()
    for r in lines:
        for i, h in reasons:
            by_reason[h] += number(r[i])
    print(f"# {len(lines)} instructions, {total:.0f} warp-stall samples; by reason: " +
          ", ".join(f"{h[6:]} {100 * v / total:.1f}%" for h, v in by_reason.most_common(10)))
    print(f"# the {args.top} instructions with the most samples (% of all, then their top reasons)")
    for r in sorted(lines, key=lambda r: -number(r[samples]))[:args.top]:
        n = number(r[samples]) or 1.0
        top = sorted(((number(r[i]), h[6:]) for i, h in reasons), reverse=True)[:3]
        print(f"{100 * number(r[samples]) / total:5.1f}%  {r[source].strip()[:64]:64s} " +
              " ".join(f"{h}={100 * v / n:.0f}%" for v, h in top if v > 0))
    ops, waits = collections.Counter(), collections.Counter()
    for r in lines:
        words = r[source].split()
        op = (words[1] if words[0].startswith("@") and len(words) > 1 else words[0]).split(".")[0]
        ops[op] += number(r[executed])
        waits[op] += number(r[samples])
    all_ops = sum(ops.values()) or 1.0
    print(f"# executed warp instructions: {all_ops:.3g}; by opcode (% executed, % of samples)")
    for op, n in ops.most_common(20):
        print(f"{op:12s} {100 * n / all_ops:5.1f}%  {100 * waits[op] / total:5.1f}%")


if __name__ == "__main__":
    main()
