"""`kvinfer serve`: the OpenAI-compatible server on a host and port (needs the `serve` extra:
pip install 'kvinfer[serve]')."""

from __future__ import annotations

import argparse
import os
import re
import sys

from kvinfer import cli_text
from kvinfer.models import model_name


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching",
                       formatter_class=cli_text.HelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder or .gguf (default: SmolLM2-135M-Instruct, embedded)")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key", default=os.environ.get("KVINFER_API_KEY"),
                   help="clients must send 'Authorization: Bearer KEY' (default: $KVINFER_API_KEY, else none)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    p.add_argument("--max-context", type=cli_text.positive, default=None,
                   help="tokens per sequence (default: the model's, at most 2048)")
    p.add_argument("--max-batch", type=cli_text.positive, default=16, help="sequences decoded together")
    p.add_argument("--max-step-tokens", type=cli_text.positive, default=512,
                   help="tokens per step: running sequences' next tokens plus prompt chunks")
    p.add_argument("--max-prefill-while-decoding", type=cli_text.positive, default=None, metavar="N",
                   help="prompt tokens a step takes while sequences are decoding (default: --max-step-tokens, half "
                        "of it with --no-batch-invariant); "
                        "fewer keep the time between a stream's tokens near a decode step's, at some cost in "
                        "time to the first token of long prompts")
    p.add_argument("--max-waiting", type=cli_text.positive, default=1024,
                   help="requests queued before new ones get status 503")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="compute every prompt in full (by default a prompt reuses the KV blocks of a cached prefix)")
    p.add_argument("--max-memory", default=None, help="memory budget with a unit, e.g. 8GiB (default: no budget)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="launch every step's kernels one by one instead of replaying CUDA graphs (debugging)")
    p.add_argument("--no-batch-invariant", action="store_true",
                   help="faster decode steps of 16+ sequences (CUDA) and decodes sharing steps with prompt "
                        "chunks; outputs may then differ in the last bits with what shares their step (by default "
                        "they never do)")
    p.add_argument("--single-process", action="store_true",
                   help="run the engine loop in the server's process (by default it has a process of its own, so "
                        "that HTTP and the engine never wait on one interpreter lock)")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from kvinfer.planner import parse_bytes

    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not in [1, 65535]")
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", args.device):
        raise ValueError(f"--device {args.device!r} is not auto, cpu or cuda:N")
    if args.max_memory is not None:
        parse_bytes(args.max_memory)
    try:
        import uvicorn

        from kvinfer.server import create_app
    except ImportError as e:
        raise ValueError(f"kvinfer serve needs {e.name}: pip install 'kvinfer[serve]'") from None
    llm_kwargs = dict(model=args.model, device=args.device, max_context=args.max_context, max_batch=args.max_batch,
                      max_step_tokens=args.max_step_tokens, max_memory=args.max_memory, progress=sys.stderr.isatty(),
                      prefix_caching=not args.no_prefix_caching, batch_invariant=not args.no_batch_invariant,
                      cuda_graphs=not args.no_cuda_graphs)
    engine_kwargs = dict(max_waiting=args.max_waiting, max_prefill_while_decoding=args.max_prefill_while_decoding)
    from kvinfer.engine_process import EngineProcess, ModelInfo

    if args.single_process:
        from kvinfer.llm import LLM
        from kvinfer.serving import ServingEngine

        llm = LLM(**llm_kwargs)
        engine, info = ServingEngine(llm, **engine_kwargs), ModelInfo.of(llm)
    else:
        llm, engine = None, EngineProcess(llm_kwargs, engine_kwargs)
        info = engine.info
    name = args.served_model_name or model_name(info.folder)
    print(f"kvinfer serve: {name} on {info.device}; {info.max_batch} sequences of up to {info.max_context} tokens; "
          f"{info.kv_blocks:,} KV blocks ({info.kv_tokens:,} tokens); "
          + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in info.memory.items()), file=sys.stderr)
    if info.graphs:
        print(f"kvinfer serve: {info.graphs}", file=sys.stderr)
    print(f"kvinfer serve: http://{args.host}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(create_app(engine, name, args.api_key), host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
        if llm is not None:
            llm.close()
    return 0
