"""Models named by their Hugging Face Hub id ("org/name"): only the files kvinfer reads are
downloaded, `kvinfer vram` fetches config.json alone, and a failed download says what was tried.
The Hub is never contacted here: snapshot_download is replaced by a stand-in."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
hub = pytest.importorskip("huggingface_hub")

from kvinfer import planner  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.models import HUB_METADATA, ModelNotFoundError, is_hub_id, resolve_model  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from tiny_models import make_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("hub") / "tiny"))


def stand_in(monkeypatch, folder=None, error=None):
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, tuple(allow_patterns)))
        if error is not None:
            raise error
        return folder

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return calls


@pytest.mark.parametrize("name, expected", [("Qwen/Qwen2.5-0.5B-Instruct", True), ("meta-llama/Llama-3.2-1B", True),
                                            ("/no/such/model", False), ("./models/x", False), ("org/x.gguf", False),
                                            ("llama-3-8b", False), ("a/b/c", False), ("../org/x", False),
                                            ("checkpoints/config.json", False), ("org/a--b", False),
                                            ("org/x.git", False)])
def test_what_counts_as_a_hub_id(name, expected):
    assert is_hub_id(name) is expected


def test_a_hub_id_loads_the_files_kvinfer_reads(tiny, monkeypatch):
    calls = stand_in(monkeypatch, tiny)
    with LLM("org/tiny-llama", device="cpu", max_context=64, max_batch=1, max_step_tokens=16) as llm:
        out = llm.generate([5, 6, 7], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4
    # the metadata first, then the one weights file (no other copy of the weights: .bin, .gguf, consolidated)
    assert calls == [("org/tiny-llama", HUB_METADATA), ("org/tiny-llama", HUB_METADATA + ("model.safetensors",))]
    assert "tokenizer.json" in HUB_METADATA and not any("*" in p for p in HUB_METADATA)


def test_a_sharded_repository_fetches_the_shards_its_index_names(tmp_path, monkeypatch):
    import json

    (tmp_path / "config.json").write_text("{}")
    shards = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
              "c.weight": "model-00001-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    calls = stand_in(monkeypatch, str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="model-00001-of-00002.safetensors.* not in the download"):
        resolve_model("org/sharded")
    for name in set(shards.values()):
        (tmp_path / name).write_bytes(b"")
    assert resolve_model("org/sharded") == str(tmp_path)
    assert calls[-1] == ("org/sharded", HUB_METADATA + ("model-00001-of-00002.safetensors",
                                                        "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="is not valid JSON"):
        resolve_model("org/sharded")


def test_a_hub_snapshot_is_named_by_its_id(tiny, tmp_path, monkeypatch):
    import shutil

    from kvinfer.models import model_name

    snapshot = tmp_path / "hub" / "models--org--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(tiny, snapshot)
    stand_in(monkeypatch, str(snapshot))
    with LLM("org/tiny-llama", device="cpu", max_context=64, max_batch=1, max_step_tokens=16) as llm:
        assert llm.plan.model == "org/tiny-llama"  # (the served model name too), not the revision
    assert model_name(str(tmp_path / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f-v1")) == "SmolLM2-135M-Instruct.Q4_1"
    assert model_name(tiny) == "tiny"


def test_a_sharded_model_loads_from_the_hubs_cache_layout(tiny, tmp_path, monkeypatch):
    """The Hub's cache links each snapshot file to a blob outside the snapshot folder."""
    import json
    import os

    from safetensors import safe_open

    blobs, snapshot = tmp_path / "models--org--tiny" / "blobs", tmp_path / "models--org--tiny" / "snapshots" / "c0ffee"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    with safe_open(os.path.join(tiny, "model.safetensors"), framework="numpy") as f:
        index = {"weight_map": {name: "model-00001-of-00001.safetensors" for name in f.keys()}}
    (tmp_path / "index").write_text(json.dumps(index))
    files = {name: os.path.join(tiny, name) for name in os.listdir(tiny)}
    files["model-00001-of-00001.safetensors"] = files.pop("model.safetensors")
    files["model.safetensors.index.json"] = str(tmp_path / "index")
    for i, (name, source) in enumerate(files.items()):
        os.symlink(source, blobs / f"blob{i}")
        os.symlink(os.path.join("..", "..", "blobs", f"blob{i}"), snapshot / name)
    stand_in(monkeypatch, str(snapshot))
    with LLM("org/tiny", device="cpu", max_context=64, max_batch=1, max_step_tokens=16) as llm:
        assert llm.generate([5, 6], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))[0].token_ids
        assert llm.plan.model == "org/tiny"


def test_vram_reads_config_json_alone(tiny, monkeypatch):
    calls = stand_in(monkeypatch, tiny)
    plan = planner.plan_memory("org/tiny-llama", context=64)
    assert calls == [("org/tiny-llama", ("config.json",))] and plan.model == "org/tiny-llama"
    assert plan.parameters > 0
    assert planner.plan_memory("llama-3-8b", context=64).parameters == 8_030_261_248  # built-in names stay built-in
    assert len(calls) == 1


def test_a_failed_download_names_the_model_and_the_cause(monkeypatch):
    stand_in(monkeypatch, error=OSError("the network is unreachable"))
    with pytest.raises(ModelNotFoundError, match=r"'org/missing'.*Hugging Face Hub failed: OSError: the network"):
        resolve_model("org/missing")


def test_a_repository_without_config_json_is_refused(tmp_path, monkeypatch):
    stand_in(monkeypatch, str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="no config.json .*GGUF-only"):
        resolve_model("org/only-gguf")
