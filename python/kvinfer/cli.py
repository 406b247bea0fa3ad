"""Command line: kvinfer generate | chat | convert-gguf | cache | vram | info | bench."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import kvinfer
from kvinfer import _core, cli_text


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


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


def cache(args: argparse.Namespace) -> int:
    from kvinfer import models

    if args.action == "list":
        entries = models.cache_entries()
        print(f"{models.cache_dir()}: {len(entries)} entries, {_gib(sum(e.bytes for e in entries))}")
        for e in entries:
            when = datetime.datetime.fromtimestamp(e.converted).strftime("%Y-%m-%d %H:%M") if e.converted else "-"
            source = e.source or "(unfinished conversion)"
            print(f"  {e.name}  {_gib(e.bytes)}  {when}  from {source}")
        return 0
    removed = models.clear_cache(args.names)
    print(f"removed {len(removed)} entries, {_gib(sum(e.bytes for e in removed))} from {models.cache_dir()}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from kvinfer.bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvinfer", description=kvinfer.__doc__)
    parser.add_argument("--version", action="version", version=f"kvinfer {kvinfer.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    cli_text.add_parsers(sub)

    p = sub.add_parser("convert-gguf", help="convert a llama GGUF into a Hugging Face folder")
    p.add_argument("file")
    p.add_argument("outdir")
    p.set_defaults(func=convert_gguf)

    p = sub.add_parser("cache", help="list or clear converted models ($KVINFER_CACHE, default ~/.cache/kvinfer)")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("names", nargs="*", help="entries to clear (default: all)")
    p.set_defaults(func=cache)

    p = sub.add_parser("info", help="build, devices and memory tracker")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=info)

    from kvinfer import serve_cli, vram_cli

    vram_cli.add_parser(sub)
    serve_cli.add_parser(sub)

    p = sub.add_parser("bench", help="prompt processing and generation tok/s as llama-bench reports them, "
                       "next to HF transformers", formatter_class=cli_text.HelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", help="cpu | cuda:N | auto")
    p.add_argument("-p", "--n-prompt", type=cli_text.positive, default=512, help="prompt tokens of the pp test")
    p.add_argument("-n", "--n-gen", type=cli_text.positive, default=128, help="generated tokens of the tg test")
    p.add_argument("-b", "--batch", type=cli_text.positive, nargs="+", default=[1], help="sequences at once")
    p.add_argument("-r", "--repetitions", type=cli_text.positive, default=5, help="timed runs per test")
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
