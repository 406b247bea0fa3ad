"""`kvinfer bench`: the figures llama-bench reports, so the two can be compared line by line:
pp<N> = prompt processing, N prompt tokens in one prefill (tok/s = batch * N / time to the first
token); tg<N> = text generation, N tokens one step at a time from a one-token prompt (tok/s =
batch * N / time); each the mean ± standard deviation over --repetitions runs after one warm-up.
HF transformers runs the same tests on the same device in the same run when torch and
transformers are installed (fp32 on the CPU, fp16 on CUDA; greedy, min_new_tokens = max_new_tokens)."""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kvinfer import _core


@dataclass
class Result:
    engine: str
    test: str  # "pp512", "tg128"
    batch: int
    rates: list[float]  # tok/s of each repetition

    def cell(self) -> str:
        mean = statistics.fmean(self.rates)
        std = statistics.stdev(self.rates) if len(self.rates) > 1 else 0.0
        return f"{mean:.2f} ± {std:.2f}"


def _rates(run: Callable[[], None], tokens: int, repetitions: int, sync: Callable[[], None]) -> list[float]:
    run()  # warm-up: first-touch allocations, CUDA graph replay set-up, HF's lazy init
    rates = []
    for _ in range(repetitions):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        rates.append(tokens / (time.perf_counter() - t0))
    return rates


def _hf_model(folder: str, device: str):
    """(model, torch) or (None, the reason) when transformers or torch cannot run here."""
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, f"HF transformers side skipped: {e.name} is not installed (pip install torch transformers)"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if device.startswith("cuda") and not torch.cuda.is_available():
        return None, "HF transformers side skipped: this torch has no CUDA (a CPU build)"
    torch.set_num_threads(_core.num_threads())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, torch


def run(args: argparse.Namespace) -> int:
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    batches = sorted(set(args.batch))
    # no prefix caching: every repetition of pp<N> prefills its N tokens (a cached prompt would be
    # read back from the KV cache instead)
    llm = LLM(args.model, device=args.device, max_context=args.n_prompt + args.n_gen, max_batch=max(batches),
              prefix_caching=False)
    hf, torch_or_reason = (None, "HF transformers side skipped (--no-hf)") if args.no_hf else _hf_model(llm.folder, llm.device)
    if hf is None:
        print(f"# {torch_or_reason}")
    torch = torch_or_reason if hf is not None else None
    sync = (lambda: torch.cuda.synchronize()) if torch is not None and llm.device.startswith("cuda") else (lambda: None)
    vocab = llm.config.vocab_size
    rng = np.random.default_rng(0)
    print(f"# kvinfer bench: {llm.config.architecture} from {llm.folder}")
    print(f"# {platform.processor() or platform.machine()}, {_core.num_threads()} threads, {_core.cpu_simd()}, "
          f"device {llm.device}, {datetime.date.today()}; {args.repetitions} repetitions after a warm-up")
    print("| engine | backend | batch | test | t/s |")
    print("| --- | --- | ---: | --- | ---: |")
    results = []
    for batch in batches:
        long_prompts = [rng.integers(0, vocab, size=args.n_prompt).tolist() for _ in range(batch)]
        short_prompts = [rng.integers(0, vocab, size=1).tolist() for _ in range(batch)]
        tests = [(f"pp{args.n_prompt}", long_prompts, 1, batch * args.n_prompt),
                 (f"tg{args.n_gen}", short_prompts, args.n_gen, batch * args.n_gen)]
        for test, prompts, new, tokens in tests:
            def ours() -> None:
                out = llm.generate(prompts, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True))
                assert all(len(o.token_ids) == new for o in out)

            rows = [Result("kvinfer", test, batch, _rates(ours, tokens, args.repetitions, sync))]
            if hf is not None:
                ids = torch.tensor(prompts, device=llm.device)

                def theirs() -> None:
                    with torch.no_grad():
                        hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
                                    attention_mask=torch.ones_like(ids))

                rows.append(Result("HF transformers", test, batch, _rates(theirs, tokens, args.repetitions, sync)))
            for r in rows:
                backend = "CUDA" if llm.device.startswith("cuda") else "CPU"
                print(f"| {r.engine} | {backend} | {r.batch} | {r.test} | {r.cell()} |", flush=True)
            results += rows
    if hf is not None:
        pairs = [(a, b) for a, b in zip(results[::2], results[1::2])]
        print("# kvinfer / HF: " + ", ".join(f"{a.test} b{a.batch} {statistics.fmean(a.rates) / statistics.fmean(b.rates):.2f}x"
                                            for a, b in pairs))
    return 0
