"""Reading the tensors of a Hugging Face model folder: model.safetensors, or shards listed in
model.safetensors.index.json. Headers are parsed without touching tensor data (the memory planner
uses that); data is read with the safetensors library, except bf16, which numpy cannot represent:
those bytes are mapped from the file and widened to float32 exactly.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from kvinfer.jsonfile import read_json_object

_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the data in the file
    end: int


def read_header(path: str) -> dict[str, TensorInfo]:
    """Tensor metadata of one .safetensors file, checked against the file's size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (truncated header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100 << 20:
            raise ValueError(f"{path}: corrupt safetensors header (length {n}, file {size} B)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not an object)")
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) + 8 + n for v in meta["data_offsets"])
            info = TensorInfo(name, path, str(meta["dtype"]), tuple(int(d) for d in meta["shape"]), begin, end)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if end > size:
            raise ValueError(f"{path} is truncated: tensor {name!r} needs bytes up to {end}, the file has {size}")
        out[name] = info
    return out


def _checked(name: str, file: str, source: np.ndarray, half: np.ndarray) -> np.ndarray:
    """`half` (source rounded to float16), unless some value is not finite: NaN or inf in the
    checkpoint, or beyond the float16 range. The error names the tensor, the file and the first
    bad index."""
    # fp16 is not finite where its exponent bits are all set: one integer pass (3x numpy's isfinite)
    exponent = np.bitwise_and(half.reshape(-1).view(np.uint16), 0x7C00)
    if half.size == 0 or exponent.max() != 0x7C00:
        return half
    at = np.unravel_index(int(np.argmax(exponent == 0x7C00)), half.shape)
    value = float(source[at])
    why = "beyond the float16 range" if math.isfinite(value) else "not finite"
    raise ValueError(f"tensor {name!r} in {file} holds {value!r} at index {tuple(int(i) for i in at)} "
                     f"({why}): the checkpoint is corrupt or needs a wider dtype than kvinfer's fp16")


def index_shards(index: str, folder: str) -> list[str]:
    """The shard files an index names, each a file inside `folder`."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: weight_map must map tensor names to shard file names")
    # The name as written must stay inside the folder; the file itself may be a link elsewhere (the
    # Hugging Face Hub's cache links each snapshot's files to its blobs).
    root = os.path.normpath(os.path.abspath(folder))
    for name in weight_map.values():
        path = os.path.normpath(os.path.join(root, name))
        if os.path.isabs(name) or not path.startswith(root + os.sep):
            raise ValueError(f"{index}: shard {name!r} is outside the model folder")
    return list(weight_map.values())


class SafetensorsFolder:
    """All tensors of a model folder, by name."""

    def __init__(self, folder: str):
        self.folder = folder
        index = os.path.join(folder, "model.safetensors.index.json")
        single = os.path.join(folder, "model.safetensors")
        if os.path.isfile(index):
            files = sorted(set(index_shards(index, folder)))
        elif os.path.isfile(single):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"weight shard {name} listed in the index is missing from {folder}")
            self.tensors.update(read_header(path))
        self._handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise ValueError(f"tensor {name!r} is missing from the weights in {self.folder}")
        return self.tensors[name]

    def read_float16(self, name: str, plus: float = 0.0) -> np.ndarray:
        """The tensor as float16 (bf16 and fp32 are rounded to nearest); with `plus`, the tensor plus
        that constant, added in float32 before the rounding (Gemma's RMSNorm weights are offsets
        from 1)."""
        info = self.info(name)
        if info.dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {info.dtype}; supported: {', '.join(_DTYPES)}")
        if info.dtype == "BF16":
            raw = np.memmap(info.file, dtype=np.uint16, mode="r", offset=info.begin, shape=info.shape)
            array = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            from safetensors import SafetensorError, safe_open

            try:
                handle = self._handles.get(info.file)
                if handle is None:
                    handle = self._handles[info.file] = safe_open(info.file, framework="numpy")
                array = handle.get_tensor(name)
            except SafetensorError as e:
                raise ValueError(f"{info.file}: cannot read tensor {name!r}: {e}") from None
        if plus:
            array = array.astype(np.float32) + np.float32(plus)
        with np.errstate(over="ignore", invalid="ignore"):
            half = array.astype(np.float16, copy=False)
        return _checked(name, info.file, array, half)

    def close(self) -> None:
        self._handles.clear()
