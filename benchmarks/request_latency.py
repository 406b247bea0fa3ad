"""Latency of requests through LLM.generate, one after another: the time from the call to its first
(and only) token. Each prompt is new, or starts with a prefix shared by every request (a system
prompt, in the prefix cache after the warm-up), so the cached and uncached times compare directly.
Where a request's time goes is printed too: before its prompt step is launched (the engine thread
starting, scheduling, block tables), launching it, from there until its token is collected (the GPU
and the next step's launch), and until the call returns. On the CPU, with a tiny model,
what shows is mostly what surrounds a step (threads waking, the engine loop), not compute.

    python benchmarks/request_latency.py [--model DIR|FILE.gguf | --shape Llama-3.2-1B] [--device cpu]
        [--prompt-len 8] [--shared-prefix 0] [-n 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def summary(times: list[float]) -> str:
    times = sorted(times)
    return f"median {statistics.median(times):.2f} ms, p90 {times[int(0.9 * len(times))]:.2f} ms, max {times[-1]:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF model folder or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--shape", default=None, help="random weights of a benchmarks/gpu_bench.py shape (on CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt-len", type=int, default=8, help="tokens of each request after the shared prefix")
    ap.add_argument("--shared-prefix", type=int, default=0, help="tokens every prompt starts with")
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("-n", type=int, default=50, help="timed requests (after 5 of warm-up)")
    args = ap.parse_args()
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    model = args.model
    if args.shape:
        from gpu_bench import random_model
        model = tempfile.mkdtemp()
        random_model(args.shape, model)
    context = 1 << max(8, (args.shared_prefix + args.prompt_len + 1).bit_length())
    llm = LLM(model, device=args.device, max_batch=4, max_context=context, prefix_caching=not args.no_prefix_caching)
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, llm.config.vocab_size, size=args.shared_prefix).tolist()
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    prompts = [prefix + rng.integers(0, llm.config.vocab_size, size=args.prompt_len).tolist()
               for _ in range(args.n + 5)]
    clock = StepClock(llm.runner)
    llm.runner = clock  # the serving loop reaches the runner through llm.runner on every call
    requests = []
    for i, prompt in enumerate(prompts):
        clock.steps.clear()
        t = time.perf_counter()
        llm.generate([prompt], params)
        if i >= 5:
            requests.append((time.perf_counter() - t) * 1e3)
            clock.requests.append([(a - t, b - t, c - t) for a, b, c in clock.steps])
    llm.runner = clock.runner
    hit = llm.engine.blocks.hit_tokens if llm.engine.prefix_caching else 0
    print(f"{args.n} requests of {args.shared_prefix} shared + {args.prompt_len} tokens, 1 new token, {llm.device}, "
          f"prefix caching {'off' if args.no_prefix_caching else 'on'} ({hit} tokens hit in all)")
    print(f"  LLM.generate, call to return: {summary(requests)}")
    first = [r[0] for r in clock.requests if r]
    print(f"  before the prompt step is launched: {summary([1e3 * a for a, _, _ in first])}")
    print(f"  launching it (host): {summary([1e3 * (b - a) for a, b, _ in first])}")
    print(f"  launched to its tokens collected: {summary([1e3 * (c - b) for _, b, c in first])}")
    print(f"  its tokens collected to the call's return: "
          f"{summary([q - 1e3 * r[0][2] for q, r in zip(requests, clock.requests) if r])}")


class StepClock:
    """Stands in for the runner: times each step's launch (its start and end) and collect (its end),
    in order; steps run two in flight, so step i's collect ends the i-th collect."""

    def __init__(self, runner):
        self.runner, self.steps, self.requests, self._launched = runner, [], [], []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def launch(self, **kwargs):
        t = time.perf_counter()
        self.runner.launch(**kwargs)
        self._launched.append((t, time.perf_counter()))

    def collect(self):
        out = self.runner.collect()
        self.steps.append((*self._launched.pop(0), time.perf_counter()))
        return out

if __name__ == "__main__":
    main()
