"""Command line: kvinfer generate | chat | convert-gguf | vram | info | bench."""

from __future__ import annotations

import argparse
import json
import sys

import kvinfer
from kvinfer import _core


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _sampling(args: argparse.Namespace):
    from kvinfer.sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed)


def _load(args: argparse.Namespace):
    from kvinfer.llm import LLM

    return LLM(args.model, device=args.device, max_context=args.max_context, max_batch=1, progress=True,
               max_memory=args.max_memory, cuda_graphs=not args.no_cuda_graphs)


def generate(args: argparse.Namespace) -> int:
    llm = _load(args)
    prompt = args.prompt
    if args.chat:
        prompt = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}]),
                                      add_special_tokens=False)
    else:
        sys.stdout.write(prompt)
    for piece in llm.stream(prompt, _sampling(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def chat(args: argparse.Namespace) -> int:
    llm = _load(args)
    params = _sampling(args)
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("kvinfer chat: /reset clears the history, /exit (or Ctrl-D) quits", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(history), add_special_tokens=False)
        keep = llm.max_context - params.max_tokens
        if len(ids) > keep:  # drop the oldest turns until the prompt fits
            while len(history) > 1 and len(ids) > keep:
                history.pop(1 if args.system and len(history) > 2 else 0)
                ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(history), add_special_tokens=False)
        sys.stdout.write("assistant> ")
        reply = []
        for piece in llm.stream(ids, params):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def convert_gguf(args: argparse.Namespace) -> int:
    from kvinfer.gguf_convert import convert_gguf as convert

    convert(args.file, args.outdir, progress=True)
    print(f"wrote {args.outdir}")
    return 0


def info(args: argparse.Namespace) -> int:
    build = kvinfer.build_info()
    devices = _core.cuda_devices()
    report = kvinfer.default_tracker().report()
    if args.json:
        print(json.dumps({"build": build, "cuda_devices": devices, "cpu_threads": _core.num_threads(),
                          "cpu_simd": _core.cpu_simd(), "tracker": report}, indent=2))
        return 0
    print(f"kvinfer {build['version']}")
    print(f"  C++ compiler     {build['cxx_compiler']}")
    print(f"  CPU              {_core.num_threads()} threads, {_core.cpu_simd()}")
    if build["cuda"]:
        print(f"  CUDA backend     on ({build['cuda_compiler']}, architectures {build['cuda_architectures']})")
    else:
        print("  CUDA backend     off (CPU-only build)")
    print(f"  CUDA available   {kvinfer.cuda_available()}")
    for d in devices:
        print(f"  cuda:{d['index']}           {d['name']} (sm_{d['compute_capability'].replace('.', '')}, "
              f"{d['multiprocessors']} SMs), {_gib(d['free_bytes'])} free of {_gib(d['total_bytes'])}")
    print(f"  tracker          {report['total_bytes']} B in use, peak {report['peak_bytes']} B")
    return 0


def bench(args: argparse.Namespace) -> int:
    from kvinfer.bench import run

    return run(args)


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _add_model_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--model", default=None, help="HF model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    p.add_argument("--max-context", type=_positive, default=None)
    p.add_argument("--max-memory", default=None, help="memory budget, e.g. 4GiB: fails early if it cannot fit")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run decode steps op by op (debugging)")
    p.add_argument("--max-tokens", type=_positive, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvinfer", description=kvinfer.__doc__)
    parser.add_argument("--version", action="version", version=f"kvinfer {kvinfer.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    _add_model_args(p, 128)
    p.set_defaults(func=generate)

    p = sub.add_parser("chat", help="interactive chat with history")
    p.add_argument("--system", default=None, help="system message")
    _add_model_args(p, 256)
    p.set_defaults(func=chat)

    p = sub.add_parser("convert-gguf", help="convert a llama GGUF into a Hugging Face folder")
    p.add_argument("file")
    p.add_argument("outdir")
    p.set_defaults(func=convert_gguf)

    p = sub.add_parser("info", help="build, devices and memory tracker")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=info)

    from kvinfer import vram_cli

    vram_cli.add_parser(sub)

    p = sub.add_parser("bench", help="CPU prefill/decode tokens/s, side by side with HF transformers")
    p.add_argument("--model", default=None)
    p.add_argument("--prompt-tokens", type=_positive, default=128)
    p.add_argument("--new-tokens", type=_positive, default=64)
    p.add_argument("--batch", type=_positive, nargs="+", default=[1, 8])
    p.add_argument("--no-hf", action="store_true", help="skip the transformers side")
    p.set_defaults(func=bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, IndexError, FileNotFoundError, MemoryError, kvinfer.CudaError) as e:
        print(f"kvinfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
