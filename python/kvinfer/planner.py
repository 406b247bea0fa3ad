"""Memory planner: every byte the engine will allocate, per purpose, before anything is
allocated, computed with the engine's own size functions (weight layout, KVCache.size_bytes,
activation layout, cuBLAS workspace). The engine's tracker report after loading equals the plan.

On CUDA the driver also needs memory for the context itself (kernels, cuBLAS, the driver's own
heaps) and for the captured decode graphs. Those parts are not allocated by kvinfer and are given
as stated estimates (the graphs' measured bytes are in LLM.graphs after loading)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import asdict, dataclass, field

from kvinfer import _core
from kvinfer.config import architecture_of, attention_window, model_config, read_config_json
from kvinfer.model_zoo import MODELS, builtin_config
from kvinfer.models import from_hub, is_hub_id, model_name

CUDA_CONTEXT_ESTIMATE = 600 << 20  # CUDA context + cuBLAS module load on an H100 (measured ~0.5 GiB)
CUDA_GRAPHS_ESTIMATE = 64 << 20    # the decode and prompt graphs: measured 0-32 MiB (docs/memory.md)
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'80GiB', '24 GB', '1.5TiB', '512B', 123456 (an int: bytes) -> bytes. A string without a unit is
    an error: '80' could mean GiB as easily as bytes."""
    if isinstance(text, bool):
        raise ValueError(f"memory size {text!r} is not a number of bytes")
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory size {text!r} is not a number with a unit (e.g. 80GiB, 24GB, 512B)")
        if not m.group(2):
            raise ValueError(f"memory size {text!r} has no unit: write {m.group(1)}GiB, {m.group(1)}GB or "
                             f"{m.group(1)}B")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0 or value >= 2**63:
        raise ValueError(f"memory size {text!r} must be > 0 and below 2^63 bytes")
    return value


def load_model_config(model: str) -> tuple[str, dict, str | None]:
    """(display name, config.json dict, folder or None) for a built-in name, a folder, a config.json
    or a Hugging Face Hub id (its config.json alone is downloaded)."""
    if os.path.isdir(model) or os.path.isfile(model):
        folder = model if os.path.isdir(model) else None
        named = model if folder else os.path.dirname(os.path.abspath(model))  # a config.json: its folder
        return model_name(named), read_config_json(model), folder
    if model.lower() not in MODELS and is_hub_id(model):
        return model, read_config_json(from_hub(model, weights=False)), None
    return model, builtin_config(model), None


def _checkpoint_bytes(folder: str, config) -> int:
    """Tensor bytes of the folder's checkpoint, after checking from the headers alone (no tensor
    data is read) that it holds every weight of the planned layout with the right shape."""
    from kvinfer.safetensors_io import SafetensorsFolder
    from kvinfer.weights import check_checkpoint

    files = SafetensorsFolder(folder)
    check_checkpoint(files, config)
    return sum(t.end - t.begin for t in files.tensors.values())


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    architecture: str
    device: str
    context: int
    batch: int
    max_step_tokens: int  # tokens of one step (the prefill chunk): the request, raised to the batch
    dtype: str
    kv_dtype: str
    parameters: int
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    workspace_bytes: int
    cuda_context_bytes: int  # stated estimate, not allocated by kvinfer
    cuda_graphs_bytes: int   # stated estimate, not allocated by kvinfer
    kv_bytes_per_token: int
    kv_formula: str
    kv_block_size: int = 16  # tokens per KV cache block
    kv_blocks: int = 0       # blocks in the pool: by default batch x ceil(context / kv_block_size)
    gpu_memory: int | None = None
    checkpoint_bytes: int | None = None  # tensor bytes in the folder's safetensors (headers only)
    max_context: int | None = None
    max_batch: int | None = None
    context_limit: int | None = None  # the model's own: its positions, or its sliding window
    notes: list[str] = field(default_factory=list)

    def by_purpose(self) -> dict[str, int]:
        """Bytes per tracker purpose, exactly as the engine allocates them."""
        out = {"weights": self.weights_bytes, "kv_cache": self.kv_cache_bytes,
               "activations": self.activations_bytes}
        if self.device == "cuda":
            out["workspace"] = self.workspace_bytes
        return out

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV cache pool holds (whole blocks)."""
        return self.kv_blocks * self.kv_block_size

    def sequences_that_fit(self, tokens: int) -> int:
        """How many sequences of `tokens` tokens the pool holds at once (none sharing blocks)."""
        return self.kv_blocks // -(-tokens // self.kv_block_size)

    @property
    def allocated_bytes(self) -> int:
        return sum(self.by_purpose().values())

    @property
    def unallocated_bytes(self) -> int:
        """What the driver takes beside kvinfer's allocations (stated estimates)."""
        return self.cuda_context_bytes + self.cuda_graphs_bytes

    @property
    def total_bytes(self) -> int:
        return self.allocated_bytes + self.unallocated_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory is None else self.total_bytes <= self.gpu_memory

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total_bytes=self.total_bytes, allocated_bytes=self.allocated_bytes, fits=self.fits,
                 by_purpose=self.by_purpose())
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def plan_memory(model: str, context: int | None = None, batch: int = 1, dtype: str = "fp16",
                gpu_memory: str | int | None = None, kv_dtype: str = "fp16", device: str = "cuda",
                max_step_tokens: int = 512) -> MemoryPlan:
    """The plan for `model` (built-in name, folder or config.json) at `context` tokens x `batch`
    slots. `device` is "cuda" or "cpu"; `max_step_tokens` is the prefill chunk."""
    name, hf, folder = load_model_config(model)
    return plan_for_config(name, hf, context, batch, dtype, gpu_memory, kv_dtype, device, max_step_tokens, folder)


def plan_for_config(name: str, hf: dict, context: int | None, batch: int, dtype: str = "fp16",
                    gpu_memory: str | int | None = None, kv_dtype: str = "fp16", device: str = "cuda",
                    max_step_tokens: int = 512, folder: str | None = None,
                    kv_blocks: int | None = None) -> MemoryPlan:
    """`kv_blocks`: the KV cache pool in blocks of 16 tokens (default: a full context per sequence,
    batch x ceil(context / 16)); a smaller pool makes sequences wait for blocks, a larger one keeps
    more prefixes cached."""
    arch = architecture_of(hf)
    c = model_config(hf)
    for label, value in (("dtype", dtype), ("kv_dtype", kv_dtype)):
        if value not in DTYPE_BYTES:
            raise ValueError(f"{label}={value!r} is not one of {', '.join(DTYPE_BYTES)}")
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    window = attention_window(hf)
    limit = min(c.max_positions, window or c.max_positions)
    context = context if context is not None else min(limit, 2048)
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= limit:
        why = f"its sliding window is {window} tokens" if window and window < c.max_positions \
            else f"it has {c.max_positions} positions"
        raise ValueError(f"context={context} is not in [1, {limit}] for {name} ({why})")
    for label, value in (("batch", batch), ("max_step_tokens", max_step_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
            raise ValueError(f"{label}={value!r} must be an integer in [1, 2^31 - 1]")
    batch = int(batch)
    if kv_blocks is not None and (isinstance(kv_blocks, bool) or not isinstance(kv_blocks, int)
                                  or not 1 <= kv_blocks < 2**31):
        raise ValueError(f"kv_blocks={kv_blocks!r} must be an integer in [1, 2^31 - 1]")
    if kv_blocks is not None and kv_blocks * 16 < context:
        raise ValueError(f"kv_blocks={kv_blocks} hold {kv_blocks * 16} tokens, fewer than one sequence of "
                         f"context={context} needs ({-(-context // 16)} blocks of 16)")
    steps = max(int(max_step_tokens), batch)
    elem = DTYPE_BYTES[dtype]
    weights = sum((elem * _numel(shape) + 255) // 256 * 256 for _, shape, _ in c.weight_specs())
    kv_elem = DTYPE_BYTES[kv_dtype]
    kv_config = _core.KVCacheConfig(c.num_layers, context, c.num_kv_heads, c.head_dim, batch, 16, kv_blocks or 0)
    kv = _core.KVCache.size_bytes(kv_config) * kv_elem // 2
    per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * kv_elem
    unsupported = _core.cuda_unsupported(c) if kind == "cuda" else ""
    return MemoryPlan(
        model=name, architecture=arch, device=kind, context=context, batch=batch, max_step_tokens=steps,
        dtype=dtype, kv_dtype=kv_dtype, parameters=c.parameter_count(), weights_bytes=weights,
        kv_cache_bytes=kv,
        activations_bytes=_core.activation_bytes(c, batch, context, steps, kind),
        workspace_bytes=_core.gemm_workspace_bytes(kind),
        cuda_context_bytes=CUDA_CONTEXT_ESTIMATE if kind == "cuda" else 0,
        cuda_graphs_bytes=CUDA_GRAPHS_ESTIMATE if kind == "cuda" else 0,
        kv_bytes_per_token=per_token,
        kv_formula=f"2 * {c.num_layers} layers * {c.num_kv_heads} kv_heads * {c.head_dim} head_dim * {kv_elem} B",
        kv_block_size=kv_config.block_size, kv_blocks=kv_config.num_blocks,
        gpu_memory=parse_bytes(gpu_memory) if gpu_memory is not None else None,
        checkpoint_bytes=_checkpoint_bytes(folder, c) if folder and _has_weights(folder) else None,
        context_limit=limit,
        notes=[f"the CUDA backend cannot run this model yet: {unsupported}"] if unsupported else [],
    )


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _has_weights(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f))
               for f in ("model.safetensors", "model.safetensors.index.json"))


def largest(fits, lo: int, hi: int) -> int | None:
    """The largest n in [lo, hi] with fits(n) (fits is monotone: true up to some n), else None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_context(plan: MemoryPlan, hf: dict, memory: int) -> int | None:
    """Largest context for plan.batch within `memory` bytes (None if not even 1 token fits)."""
    c = model_config(hf)
    limit = min(c.max_positions, attention_window(hf) or c.max_positions)
    return largest(lambda n: _replan(plan, hf, context=n).total_bytes <= memory, 1, limit)


def max_batch(plan: MemoryPlan, hf: dict, memory: int, upper: int = 4096) -> int | None:
    """Largest batch at plan.context within `memory` bytes."""
    return largest(lambda b: _replan(plan, hf, batch=b).total_bytes <= memory, 1, upper)


def _replan(plan: MemoryPlan, hf: dict, **change) -> MemoryPlan:
    args = dict(context=plan.context, batch=plan.batch)
    args.update(change)
    return plan_for_config(plan.model, hf, args["context"], args["batch"], plan.dtype, None, plan.kv_dtype,
                           plan.device, plan.max_step_tokens)


def fit_to_memory(name: str, hf: dict, memory: int, context: int | None, batch: int | None, device: str,
                  max_step_tokens: int = 512, batch_cap: int = 64) -> MemoryPlan:
    """The plan an engine uses under `memory` bytes: the given context/batch, or, where one is
    left open, the largest that fits (batch up to `batch_cap`; context up to the default); then the
    KV pool grows into the memory left (or, for a given batch whose full contexts do not fit,
    shrinks to what fits, at least one full context). Raises kvinfer.OutOfMemoryError with the
    numbers, before anything is allocated, when nothing fits."""
    import kvinfer

    def plan(ctx, b):
        return plan_for_config(name, hf, ctx, b, "fp16", memory, "fp16", device, max_step_tokens)

    base = plan(context, batch or 1)
    notes = []
    if batch is None:
        best = largest(lambda b: plan(base.context, b).total_bytes <= memory, 1, batch_cap)
        if best is None and context is None:
            ctx = largest(lambda n: plan(n, 1).total_bytes <= memory, 1, base.context)
            if ctx is not None:
                base, best = plan(ctx, 1), 1
                notes.append(f"context lowered to {ctx} tokens, the most that fits with one sequence")
        if best is not None:
            base = plan(base.context, best)
            notes.append(f"batch {best}: the most sequences of {base.context} tokens that fit (cap {batch_cap})")
    elif context is None and base.total_bytes > memory:
        ctx = largest(lambda n: plan(n, batch).total_bytes <= memory, 1, base.context)
        if ctx is not None:
            base = plan(ctx, batch)
            notes.append(f"context lowered to {ctx} tokens, the most that fits with batch {batch}")
    # The KV pool takes the memory left: as many whole blocks as fit, and at least one full
    # context. Below batch full contexts, sequences wait (or are preempted) for blocks.
    one = -(-base.context // base.kv_block_size)
    block_bytes = base.kv_bytes_per_token * base.kv_block_size
    fill = base.kv_blocks + (memory - base.total_bytes) // block_bytes
    if fill >= one and fill != base.kv_blocks:
        base = plan_for_config(name, hf, base.context, base.batch, "fp16", memory, "fp16", device, max_step_tokens,
                               kv_blocks=int(fill))
        notes.append(f"KV pool of {base.kv_blocks:,} blocks ({base.kv_tokens:,} tokens): "
                     f"{base.sequences_that_fit(base.context)} sequences of {base.context} tokens at once")
    if base.total_bytes > memory:
        parts = ", ".join(f"{k} {v:,} B" for k, v in base.by_purpose().items())
        raise kvinfer.OutOfMemoryError(
            f"{name} at context {base.context} x batch {base.batch} needs {base.total_bytes:,} B ({parts}, "
            f"cuda context and graphs estimate {base.unallocated_bytes:,} B) but max_memory is {memory:,} B")
    notes.append(f"planned {base.total_bytes:,} B of {memory:,} B")
    return dataclasses.replace(base, notes=base.notes + notes)
