"""Where a decode step's GPU time goes: kernels per step and their time (CUPTI through
torch.profiler) while kvinfer generates with random weights of a benchmark shape. With --prefill N,
where the time to the first token of one N-token prompt goes instead: attention, GEMMs, the rest.

    python benchmarks/profile_step.py --model Llama-3.2-1B --batch 1 [--no-cuda-graphs] [--prefill 2048]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time

import numpy as np
import torch

from gpu_bench import SHAPES, random_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Llama-3.2-1B", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--prefill", type=int, default=0, metavar="N", help="profile one N-token prompt's first token")
    args = ap.parse_args()
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    folder = tempfile.mkdtemp()
    random_model(args.model, folder)
    prompt_len = args.prefill or 128
    llm = LLM(folder, device="cuda:0", max_context=max(1024, prompt_len + 8), max_batch=max(args.batch, 1),
              max_step_tokens=max(2048, prompt_len), cuda_graphs=not args.no_cuda_graphs)
    vocab = SHAPES[args.model]["vocab_size"]
    rng = np.random.default_rng(0)

    def prompts():  # new ones each time: a prompt the prefix cache holds would not be computed
        return [rng.integers(0, vocab, size=prompt_len).tolist() for _ in range(args.batch)]

    new_tokens = 1 if args.prefill else args.new_tokens
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompts(), params)  # warm-up
    walls = []  # the whole call, unprofiled (the profiler adds time of its own)
    timed = TimedRunner(llm.runner)
    llm.runner = timed
    for _ in range(5):
        run = prompts()
        t0 = time.perf_counter()
        timed.marks = [("call", t0)]
        llm.generate(run, params)
        walls.append(time.perf_counter() - t0)
        timed.mark("return")
        timed.calls.append(timed.marks)
    llm.runner = timed.runner
    if args.prefill:
        print_host_split(timed.calls)
    run = prompts()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        llm.generate(run, params)
        torch.cuda.synchronize()
    kernels = collections.defaultdict(lambda: [0, 0.0])
    spans = []  # (start, end, name) of every GPU activity, us
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[e.name[:90]]
            k[0] += 1
            k[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            spans.append((e.time_range.start, e.time_range.end, e.name[:60]))
    spans.sort()
    first, last = spans[0][0], max(end for _, end, _ in spans)
    steps = new_tokens
    total = sum(t for _, t in kernels.values())
    if args.prefill:
        split = collections.Counter()
        for name, (_, t) in kernels.items():
            kind = ("attention" if "prefill_" in name else
                    "GEMM" if any(w in name.lower() for w in ("gemm", "xmma", "cutlass", "nvjet", "skinny", "gate_up")) else "rest")
            split[kind] += t
        print(f"# {args.model}: first token of a {prompt_len}-token prompt, {total / 1e3:.2f} ms of GPU time: " +
              ", ".join(f"{k} {v / 1e3:.2f} ms ({100 * v / total:.0f}%)" for k, v in split.most_common()) +
              f"; generate() takes {1e3 * statistics.median(walls):.2f} ms unprofiled (median of 5)")
    print(f"# {args.model} batch {args.batch}, {steps} tokens, graphs {not args.no_cuda_graphs}: "
          f"{sum(n for n, _ in kernels.values()) / steps:.0f} GPU activities per step, "
          f"{total / steps:.1f} us GPU time per step, {(last - first) / steps:.1f} us span per step")
    for name, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"{t / steps:9.1f} us/step {n / steps:6.1f}/step {t / n:8.2f} us each  {name}")
    print_gaps(spans, steps)
    print_runtime_calls(prof, steps)


class TimedRunner:
    """The runner with host timestamps around its launch and collect calls (unprofiled: where a
    call's time goes between Python, launching and waiting for the GPU)."""

    def __init__(self, runner) -> None:
        self.runner, self.marks, self.calls = runner, [], []

    def mark(self, what: str) -> None:
        self.marks.append((what, time.perf_counter()))

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def launch(self, *a, **kw):
        self.mark("launch")
        out = self.runner.launch(*a, **kw)
        self.mark("launched")
        return out

    def collect(self, *a, **kw):
        self.mark("collect")
        out = self.runner.collect(*a, **kw)
        self.mark("collected")
        return out


def print_host_split(calls: list) -> None:
    """Median ms between consecutive marks of the unprofiled calls (those with one launch)."""
    spans = collections.defaultdict(list)
    for marks in calls:
        for (a, ta), (b, tb) in zip(marks, marks[1:]):
            spans[f"{a} -> {b}"].append(1e3 * (tb - ta))
    print("# host split of an unprofiled call, median ms: " +
          ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in spans.items()))


def print_runtime_calls(prof, steps: int) -> None:
    """The host side of launching: CUDA runtime and driver calls the profiler saw (CUPTI records
    them with the kernels), their count and host time per step."""
    calls = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith(("cuda", "cu")):
            c = calls[e.name]
            c[0] += 1
            c[1] += e.cpu_time_total
    total = sum(t for _, t in calls.values())
    print(f"# CUDA runtime calls on the host: {total / steps:.1f} us/step; largest:")
    for name, (n, t) in sorted(calls.items(), key=lambda kv: -kv[1][1])[:8]:
        print(f"{t / steps:9.1f} us/step {n / steps:6.1f}/step {t / n:8.2f} us each  {name}")


def print_gaps(spans: list, steps: int) -> None:
    """Where the GPU sat idle inside the profiled span (waiting for the host): the total and the
    largest gaps, each with the activities on either side."""
    gaps, reach = [], spans[0][1]
    for i in range(1, len(spans)):
        if spans[i][0] > reach:
            gaps.append((spans[i][0] - reach, i))
        reach = max(reach, spans[i][1])
    print(f"# idle inside the span: {sum(g for g, _ in gaps) / steps:.1f} us/step in {len(gaps)} gaps; largest:")
    for g, i in sorted(gaps, reverse=True)[:8]:
        print(f"{g:9.1f} us  after {spans[i - 1][2]}  before {spans[i][2]}")


if __name__ == "__main__":
    main()
