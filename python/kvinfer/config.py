"""config.json -> the native ModelConfig, through the description of the model's family
(kvinfer.families)."""

from __future__ import annotations

import os
from typing import Any

from kvinfer import _core
from kvinfer.families import SUPPORTED_ARCHITECTURES, _int, family_of
from kvinfer.jsonfile import read_json_object

__all__ = ["SUPPORTED_ARCHITECTURES", "architecture_of", "attention_window", "model_config", "read_config_json"]


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a model folder (or the file itself) as a dict, with clear errors."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.json not found: {path}")
    return read_json_object(path)


def architecture_of(cfg: dict[str, Any]) -> str:
    return family_of(cfg)[0]


def model_config(cfg: dict[str, Any]) -> _core.ModelConfig:
    """The native ModelConfig for a config.json dict; ValueError names what is unsupported."""
    arch, family = family_of(cfg)
    c = _core.ModelConfig()
    c.architecture = arch
    c.vocab_size = _int(cfg, "vocab_size")
    family.describe(cfg, c)
    c.validate()
    return c


def attention_window(cfg: dict[str, Any]) -> int | None:
    """Sliding-window size when the model uses one (Mistral, Qwen2 with use_sliding_window): the
    engine computes full attention, which equals the model only within the window."""
    return family_of(cfg)[1].window(cfg)
