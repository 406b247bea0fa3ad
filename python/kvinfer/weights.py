"""Loads a checkpoint's tensors into a Runner, through the weight map of the model's family
(kvinfer.families): the parts of each kvinfer weight are read, transposed where the family stores
[in, out], and concatenated along rows (Q/K/V, gate/up)."""

from __future__ import annotations

import numpy as np

from kvinfer import _core
from kvinfer.families import Source, family_by_architecture
from kvinfer.safetensors_io import SafetensorsFolder


def weight_sources(c: _core.ModelConfig, names: set[str] | None = None) -> list[Source]:
    """Where each kvinfer weight comes from (the family's weight map); `names` are the checkpoint's
    tensor names, where a family's naming has variants."""
    return family_by_architecture(c.architecture).weights(c, names or set())


def check_checkpoint(files: SafetensorsFolder, config: _core.ModelConfig) -> list[Source]:
    """Every tensor the model needs is present with the right shape (headers only, no data)."""
    sources = weight_sources(config, set(files.tensors))
    for src in sources:
        for name, shape in zip(src.parts, src.shapes):
            info = files.info(name)
            if info.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {info.shape}, expected {shape}")
    return sources


def load_weights(runner: _core.Runner, config: _core.ModelConfig, folder: str, progress: bool = False) -> None:
    """Reads every tensor the model needs from `folder` into the runner's weight allocation."""
    files = SafetensorsFolder(folder)
    sources = check_checkpoint(files, config)  # before reading any data
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="loading weights", unit="tensor", leave=False)
    try:
        for src in sources:
            arrays = [files.read_float16(name, plus=src.plus) for name in src.parts]
            if src.transpose:
                arrays = [a.T for a in arrays]
            array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            runner.set_weight(src.target, np.ascontiguousarray(array))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        files.close()
    missing = runner.missing_weights()
    if missing:
        raise ValueError(f"weights not loaded: {', '.join(missing[:5])}")
