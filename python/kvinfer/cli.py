"""Command line: `kvinfer info` (more subcommands arrive with the engine)."""

from __future__ import annotations

import argparse
import json
import sys

import kvinfer
from kvinfer import _core


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def info(args: argparse.Namespace) -> int:
    build = kvinfer.build_info()
    devices = _core.cuda_devices()
    report = kvinfer.default_tracker().report()
    if args.json:
        print(json.dumps({"build": build, "cuda_devices": devices, "tracker": report}, indent=2))
        return 0
    print(f"kvinfer {build['version']}")
    print(f"  C++ compiler     {build['cxx_compiler']}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvinfer", description=kvinfer.__doc__)
    parser.add_argument("--version", action="version", version=f"kvinfer {kvinfer.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="build, devices and memory tracker")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
