"""Latency of short requests through LLM.generate, one after another: the time from the call to
its first (and only) token, for prompts of a few tokens, each new (no prefix-cache hit). What it
shows on the CPU is mostly what surrounds a step (threads waking, the engine loop), not compute.

    python benchmarks/request_latency.py [--model DIR|FILE.gguf] [--device cpu] [--prompt-len 8] [-n 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF model folder or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("-n", type=int, default=50, help="timed requests (after 5 of warm-up)")
    args = ap.parse_args()
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    llm = LLM(args.model, device=args.device, max_batch=4, max_context=256)
    rng = np.random.default_rng(0)
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    times = []
    for i in range(args.n + 5):
        prompt = rng.integers(0, llm.config.vocab_size, size=args.prompt_len).tolist()
        t = time.perf_counter()
        llm.generate([prompt], params)
        if i >= 5:
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    print(f"{args.n} requests of {args.prompt_len} tokens, 1 new token, {llm.device}: median "
          f"{statistics.median(times):.2f} ms, p90 {times[int(0.9 * len(times))]:.2f} ms, max {times[-1]:.2f} ms")


if __name__ == "__main__":
    main()
