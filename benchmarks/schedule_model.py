"""The scheduling policy alone, on a time model of the GPU: the real serving loop (scheduler,
prefix cache, step inputs) runs serve_bench.py's offline request mix on a tiny CPU model whose
steps are not waited for; each step is charged a modelled time instead, so the policy's throughput
and inter-token gaps show without a GPU. The model: a decode step of R rows costs
decode_ms + R * decode_row_ms; a step of T tokens with prompt tokens among them costs the larger of
that for min(T, 64) rows and prompt_ms + T * prompt_token_ms. The defaults fit Llama-3.2-1B shapes on an
H200 (docs/benchmarks.md: 1.13 ms a batch-1 step, 1.64 at 64 rows, ~9 ms for 2048 prompt tokens).

    python benchmarks/schedule_model.py [--model DIR] [--max-batch 64] [--max-step-tokens 512]
        [--mixed] [--max-prefill-while-decoding N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict

import numpy as np

from serve_bench import workload


class ModelledRunner:
    """Stands in for the runner: enqueues nothing, charges each step its modelled time, and records
    when each slot's decode tokens come out (virtual milliseconds)."""

    def __init__(self, runner, args):
        self.runner, self.args, self.now, self.pending = runner, args, 0.0, []
        self.times: dict[int, list[float]] = defaultdict(list)  # slot -> its decode tokens' times
        self.steps = {"decode": 0, "with prompt tokens": 0}

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def launch(self, **kw):
        a = self.args
        lengths = np.diff(kw["query_starts"])
        tokens, rows = int(lengths.sum()), len(lengths)
        decode = a.decode_ms + a.decode_row_ms * min(tokens, 64)  # (the weights' read is the floor)
        self.now += decode if tokens == rows else max(decode, a.prompt_ms + a.prompt_token_ms * tokens)
        self.steps["decode" if tokens == rows else "with prompt tokens"] += 1
        for slot, n in zip(kw["kv_slots"], lengths):
            if n == 1:
                self.times[int(slot)].append(self.now)
            else:  # a prompt chunk: the slot's next gaps belong to a new sequence (or its first token)
                self.times[int(slot)].append(None)
        self.pending.append(len(kw["logit_rows"]))

    def collect(self):
        return np.zeros(self.pending.pop(0), np.int32)

    def gaps(self) -> list[float]:
        out = []
        for ts in self.times.values():
            out += [b - a for a, b in zip(ts, ts[1:]) if a is not None and b is not None]
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a tiny HF model folder (default: one made here)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-step-tokens", type=int, default=512)
    ap.add_argument("--max-prefill-while-decoding", type=int, default=None)
    ap.add_argument("--mixed", action="store_true", help="decodes and prompt chunks share steps (batch_invariant=False)")
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[64, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[16, 512])
    ap.add_argument("--decode-ms", type=float, default=1.10)
    ap.add_argument("--decode-row-ms", type=float, default=0.0085)
    ap.add_argument("--prompt-ms", type=float, default=0.6)
    ap.add_argument("--prompt-token-ms", type=float, default=0.0042)
    args = ap.parse_args()
    import transformers

    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams
    from kvinfer.serving import ServingEngine

    folder = args.model
    if folder is None:
        folder = tempfile.mkdtemp()
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=16, vocab_size=1000, max_position_embeddings=4096)
        transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    context = args.prompt_len[1] + args.output_len[1]
    with LLM(folder, device="cpu", max_batch=args.max_batch, max_context=context, max_step_tokens=args.max_step_tokens,
             batch_invariant=not args.mixed) as llm:
        model = ModelledRunner(llm.runner, args)
        llm.runner = model
        engine = ServingEngine(llm, max_waiting=None, max_prefill_while_decoding=args.max_prefill_while_decoding)
        requests = workload(args.num_requests, tuple(args.prompt_len), tuple(args.output_len), llm.config.vocab_size, 0)
        for p, o in requests:  # all submitted before the engine thread takes the first step
            engine.submit(p, SamplingParams(max_tokens=o, temperature=0, ignore_eos=True), lambda d: None)
        while engine.stats()["running"] or engine.stats()["waiting"]:
            time.sleep(0.05)
        engine.close()
        llm.runner = model.runner
    tokens = sum(o for _, o in requests)
    gaps = sorted(model.gaps())
    print(f"{'mixed steps' if args.mixed else 'decodes and prompts take turns'}, max_batch {args.max_batch}, "
          f"{args.max_step_tokens} tokens a step, max_prefill_while_decoding {args.max_prefill_while_decoding}: "
          f"{tokens / model.now * 1e3:,.0f} output tok/s (modelled), {model.steps}; inter-token gap median "
          f"{statistics.median(gaps):.2f} ms, p99 {gaps[int(0.99 * len(gaps))]:.2f} ms")


if __name__ == "__main__":
    main()
