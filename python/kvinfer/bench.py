"""`kvinfer bench`: CPU prefill and decode tokens/s at each batch size, side by side with HF
transformers (torch fp32, same threads, same prompts, same number of new tokens, min_new_tokens set)
in the same run. Prefill = the time to the first token; decode = the rest."""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np

import kvinfer
from kvinfer import _core


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rates(run, batch: int, prompt: int, new: int, repeats: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) from runs making 1 and `new` tokens."""
    run(1)  # warm-up
    t1 = _median_time(lambda: run(1), repeats)
    tn = _median_time(lambda: run(new), repeats)
    return batch * prompt / t1, batch * (new - 1) / max(tn - t1, 1e-9)


def run(args: argparse.Namespace) -> int:
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    threads = _core.num_threads()
    llm = LLM(args.model, device="cpu", max_context=args.prompt_tokens + args.new_tokens,
              max_batch=max(args.batch))
    rng = np.random.default_rng(0)
    vocab = llm.config.vocab_size
    hf = None
    if not args.no_hf:
        try:
            import torch
            import transformers
        except ImportError:
            print("transformers/torch not installed: kvinfer side only")
        else:
            torch.set_num_threads(threads)
            hf = transformers.AutoModelForCausalLM.from_pretrained(llm.folder, dtype=torch.float32).eval()

    print(f"# kvinfer bench: {llm.config.architecture} from {llm.folder}")
    print(f"# {platform.processor() or platform.machine()}, {threads} threads, {_core.cpu_simd()}, "
          f"{datetime.date.today()}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
          f"median of 3")
    print(f"{'batch':>5} | {'prefill tok/s':>13} {'HF':>8} {'ratio':>6} | {'decode tok/s':>12} {'HF':>8} {'ratio':>6}")
    for batch in args.batch:
        prompts = [rng.integers(0, vocab, size=args.prompt_tokens).tolist() for _ in range(batch)]

        def ours(n: int) -> None:
            out = llm.generate(prompts, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
            assert all(len(o.token_ids) == n for o in out)

        p, d = _rates(ours, batch, args.prompt_tokens, args.new_tokens, 3)
        hp = hd = float("nan")
        if hf is not None:
            import torch

            ids = torch.tensor(prompts)

            def theirs(n: int) -> None:
                with torch.no_grad():
                    hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=0, attention_mask=torch.ones_like(ids))

            hp, hd = _rates(theirs, batch, args.prompt_tokens, args.new_tokens, 3)
        print(f"{batch:>5} | {p:>13.1f} {hp:>8.1f} {p / hp:>6.2f} | {d:>12.1f} {hd:>8.1f} {d / hd:>6.2f}",
              flush=True)
    return 0
