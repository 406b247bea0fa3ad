"""CPU benchmark: same as `kvinfer bench` (see python/kvinfer/bench.py)."""

import sys

from kvinfer.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
