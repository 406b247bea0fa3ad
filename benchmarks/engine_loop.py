"""Where the serving loop's time goes on the offline request mix of serve_bench.py (every request at
once through LLM.generate, no HTTP): per step, the engine thread's own Python (scheduling, step
inputs, taking tokens), the native launch (enqueueing the step), and the wait for the step's tokens
(the GPU still busy). A loop that waits little in collect is host-bound; one that waits most of the
time is GPU-bound. Steps are split into decode and prompt steps, with their mean sizes.

    python benchmarks/engine_loop.py --shape Llama-3.2-1B --device cuda:0 --num-requests 1000
    python benchmarks/engine_loop.py --model DIR --device cpu --num-requests 64 --output-len 64 128
"""

from __future__ import annotations

import argparse
import tempfile
import time

from serve_bench import workload


class StepClock:
    """Stands in for the runner in the serving loop (which reaches it through llm.runner): sums the
    time in launch and in collect, and counts each step's rows."""

    def __init__(self, runner):
        self.runner = runner
        self.launch_s = self.collect_s = 0.0
        self.decode_steps = self.decode_rows = self.prompt_steps = self.prompt_tokens = 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def launch(self, **kwargs):
        t = time.perf_counter()
        self.runner.launch(**kwargs)
        self.launch_s += time.perf_counter() - t
        rows, tokens = len(kwargs["query_starts"]) - 1, len(kwargs["tokens"])
        if tokens == rows:  # one token a sequence: a decode step (prompt steps of one token each are rare)
            self.decode_steps, self.decode_rows = self.decode_steps + 1, self.decode_rows + rows
        else:  # prompt chunks (and, in mixed steps, decode rows: counted with the prompt tokens)
            self.prompt_steps, self.prompt_tokens = self.prompt_steps + 1, self.prompt_tokens + tokens

    def collect(self):
        t = time.perf_counter()
        out = self.runner.collect()
        self.collect_s += time.perf_counter() - t
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF model folder or .gguf")
    ap.add_argument("--shape", default=None, help="random weights of a benchmarks/gpu_bench.py shape (on CUDA)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--max-step-tokens", type=int, default=512)
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[64, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[16, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-batch-invariant", action="store_true", help="LLM(batch_invariant=False): mixed steps")
    args = ap.parse_args()
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    model = args.model
    if args.shape:
        from gpu_bench import random_model
        model = tempfile.mkdtemp()
        random_model(args.shape, model)
    with LLM(model, device=args.device, max_context=args.max_context, max_batch=args.max_batch,
             max_step_tokens=args.max_step_tokens, batch_invariant=not args.no_batch_invariant) as llm:
        requests = workload(args.num_requests, tuple(args.prompt_len), tuple(args.output_len),
                            llm.config.vocab_size, args.seed)
        params = [SamplingParams(max_tokens=o, temperature=0, ignore_eos=True) for _, o in requests]
        llm.generate([p for p, _ in requests[:8]], params[:8])  # warm-up
        clock = StepClock(llm.runner)
        llm.runner = clock
        t0 = time.perf_counter()
        outs = llm.generate([p for p, _ in requests], params)
        wall = time.perf_counter() - t0
        llm.runner = clock.runner
    tokens = sum(len(o.token_ids) for o in outs)
    steps = clock.decode_steps + clock.prompt_steps
    python = wall - clock.launch_s - clock.collect_s
    print(f"{args.num_requests} requests at once, {llm.device}, max_batch {args.max_batch}: {tokens / wall:,.1f} "
          f"output tok/s in {wall:.2f} s")
    print(f"  {clock.decode_steps} decode steps of {clock.decode_rows / max(1, clock.decode_steps):.1f} rows on average, "
          f"{clock.prompt_steps} prompt steps of {clock.prompt_tokens / max(1, clock.prompt_steps):.0f} tokens")
    for name, s in (("engine-thread Python", python), ("native launch", clock.launch_s),
                    ("waiting in collect", clock.collect_s)):
        print(f"  {name:22s} {s:7.2f} s  {100 * s / wall:5.1f}%  {1e3 * s / max(1, steps):6.3f} ms a step")


if __name__ == "__main__":
    main()
