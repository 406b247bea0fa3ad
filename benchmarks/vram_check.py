"""Plan vs allocation vs the driver, on a CUDA device: for a random model with Llama-3.2-1B's shapes
at batch 1 and 16 (context 2048), prints the plan per purpose, the tracker's report, and the
cudaMemGetInfo delta across loading, each measurement in a fresh process without torch (so no
other allocator holds memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

MEASURE = r'''
import json, sys
import kvinfer
from kvinfer import _core
folder, batch = sys.argv[1], int(sys.argv[2])
free0, total = _core.cuda_mem_info(0)        # the context exists from here on
llm = kvinfer.LLM(folder, device="cuda:0", max_context=2048, max_batch=batch, tracker=kvinfer.VramTracker())
free1, _ = _core.cuda_mem_info(0)
print(json.dumps({"batch": batch, "total": total, "free0": free0, "free1": free1,
                  "plan": llm.plan.by_purpose(), "context_estimate": llm.plan.cuda_context_bytes,
                  "tracker": {k: v["bytes"] for k, v in llm_tracker.report()["purposes"].items()}}))
'''


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else None
    if folder is None:
        folder = tempfile.mkdtemp(prefix="llama-1b-shape")
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import gpu_bench; "
                        f"gpu_bench.random_model('Llama-3.2-1B', {folder!r})"], check=True)
    print("| batch | purpose | plan B | tracker B |")
    print("| --- | --- | --- | --- |")
    rows = []
    for batch in (1, 16):
        code = MEASURE.replace("tracker=kvinfer.VramTracker())", "tracker=(llm_tracker := kvinfer.VramTracker()))")
        out = subprocess.run([sys.executable, "-c", code, folder, str(batch)], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr)
            raise SystemExit(1)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        for k, v in r["plan"].items():
            print(f"| {batch} | {k} | {v:,} | {r['tracker'].get(k, 0):,} |")
    print()
    print("| batch | planned (allocated) B | tracker total B | cudaMemGetInfo delta B | delta - planned | as % of planned |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        planned, tracked, delta = sum(r["plan"].values()), sum(r["tracker"].values()), r["free0"] - r["free1"]
        print(f"| {r['batch']} | {planned:,} | {tracked:,} | {delta:,} | {delta - planned:,} | "
              f"{100 * (delta - planned) / planned:.2f}% |")
    r = rows[0]
    print(f"\ncontext (total - free before loading): {r['total'] - r['free0']:,} B; stated estimate "
          f"{r['context_estimate']:,} B")


if __name__ == "__main__":
    main()
