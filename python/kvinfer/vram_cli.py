"""`kvinfer vram`: the memory plan as a table or JSON, reverse questions, an optional plot."""

from __future__ import annotations

import argparse
import dataclasses

from kvinfer import cli_text, planner


def _gib(n: int) -> str:
    return f"{n / 2**30:8.2f} GiB"


def add_parser(sub) -> None:
    p = sub.add_parser("vram", help="how much memory a model needs (exact, per purpose)",
                       formatter_class=cli_text.HelpFormatter)
    p.add_argument("--model", required=True, help="built-in name (e.g. llama-3-8b), a model folder or config.json")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: min(model, 2048))")
    p.add_argument("--batch", type=int, default=1, help="sequences held at once (KV cache slots)")
    p.add_argument("--dtype", default="fp16", choices=sorted(planner.DTYPE_BYTES), help="weight dtype")
    p.add_argument("--kv-dtype", default="fp16", choices=sorted(planner.DTYPE_BYTES), help="KV cache dtype")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where it runs")
    p.add_argument("--max-step-tokens", type=int, default=512, help="prefill chunk (tokens per forward step)")
    p.add_argument("--gpu-memory", default=None, help="memory to fit in, with a unit: 80GiB, 24GB (80 alone is an error; default: no check)")
    p.add_argument("--max-context", action="store_true", help="largest context for --batch within --gpu-memory")
    p.add_argument("--max-batch", action="store_true", help="largest batch for --context within --gpu-memory")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="memory per purpose against context")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    name, hf, folder = planner.load_model_config(args.model)
    plan = planner.plan_for_config(name, hf, args.context, args.batch, args.dtype, args.gpu_memory,
                                   args.kv_dtype, args.device, args.max_step_tokens, folder)
    if (args.max_context or args.max_batch) and plan.gpu_memory is None:
        raise ValueError("--max-context / --max-batch need --gpu-memory")
    change = {}
    if args.max_context:
        change["max_context"] = planner.max_context(plan, hf, plan.gpu_memory) or 0
    if args.max_batch:
        change["max_batch"] = planner.max_batch(plan, hf, plan.gpu_memory) or 0
    plan = dataclasses.replace(plan, **change)
    if args.json:
        print(plan.to_json())
    else:
        print_table(plan)
    if args.plot:
        plot(plan, hf, args.plot)
    return 0


def print_table(plan: planner.MemoryPlan) -> None:
    print(f"model {plan.model} ({plan.architecture}), {plan.parameters:,} parameters, {plan.dtype} weights, "
          f"{plan.kv_dtype} KV cache, device {plan.device}")
    print(f"context {plan.context} tokens x batch {plan.batch} (prefill chunk {plan.max_step_tokens})")
    rows = list(plan.by_purpose().items())
    if plan.device == "cuda":
        rows.append(("cuda context (estimate)", plan.cuda_context_bytes))
        rows.append(("cuda graphs (estimate)", plan.cuda_graphs_bytes))
    for purpose, n in rows:
        extra = ""
        if purpose == "kv_cache":
            extra = f"   {plan.kv_bytes_per_token:,} B/token = {plan.kv_formula}"
        print(f"  {purpose:<24} {n:>18,} B {_gib(n)}{extra}")
        if purpose == "kv_cache":
            print(f"  {'':<24} {plan.kv_blocks:,} blocks of {plan.kv_block_size} tokens = {plan.kv_tokens:,} KV tokens: "
                  f"{plan.sequences_that_fit(plan.context):,} sequences of {plan.context} tokens at once")
    print(f"  {'total':<24} {plan.total_bytes:>18,} B {_gib(plan.total_bytes)}")
    if plan.checkpoint_bytes is not None:
        print(f"  (checkpoint tensors on disk: {plan.checkpoint_bytes:,} B)")
    if plan.gpu_memory is not None:
        spare = plan.gpu_memory - plan.total_bytes
        verdict = "fits" if plan.fits else "does NOT fit"
        print(f"memory {plan.gpu_memory:,} B: {verdict} ({'spare' if spare >= 0 else 'short by'} {abs(spare):,} B)")
    if plan.max_context is not None:
        own = " (the model's own limit: more memory would not raise it)" if plan.max_context == plan.context_limit else ""
        print(f"max context at batch {plan.batch}: {plan.max_context or 'none (weights alone do not fit)'}{own}")
    if plan.max_batch is not None:
        print(f"max batch at context {plan.context}: {plan.max_batch or 'none (weights alone do not fit)'}")
    for note in plan.notes:
        print(f"note: {note}")


def plot(plan: planner.MemoryPlan, hf: dict, path: str) -> None:
    """Memory per purpose against context (stacked, from 0), the budget line, the chosen context and
    the largest that fits marked; purposes under 1% of the total fold into "other"."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    limit = plan.context_limit or plan.context
    contexts = sorted({1, plan.context, *(max(1, limit * i // 32) for i in range(1, 33))})
    plans = [planner._replan(plan, hf, context=n) for n in contexts]
    parts = {k: [p.by_purpose()[k] for p in plans] for k in plans[0].by_purpose()}
    if plan.device == "cuda":
        parts["cuda context and graphs"] = [p.unallocated_bytes for p in plans]
    total = max(p.total_bytes for p in plans)
    series = {k: v for k, v in parts.items() if max(v) >= total / 100}
    small = [v for k, v in parts.items() if k not in series]
    if small:
        series["other"] = [sum(col) for col in zip(*small)]
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.stackplot(contexts, [[b / 2**30 for b in v] for v in series.values()], labels=list(series), alpha=0.85)
    if plan.gpu_memory:
        ax.axhline(plan.gpu_memory / 2**30, color="black", linestyle="--", linewidth=1.5, label="memory budget", zorder=5)
        fit = planner.max_context(plan, hf, plan.gpu_memory)
        if fit:
            ax.axvline(fit, color="tab:red", linestyle=":", linewidth=1.5, label=f"largest context that fits: {fit}")
    ax.axvline(plan.context, color="tab:blue", linestyle="-.", linewidth=1.5, label=f"chosen context: {plan.context}")
    ax.set_xlim(0, limit)
    ax.set_ylim(0, None)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("GiB")
    ax.set_title(f"{plan.model}, batch {plan.batch}, {plan.dtype}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the data
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")
