"""Checkpoint forms: sharded safetensors with an index, bf16 and fp32 checkpoints (the CLI: test_cli.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from tiny_models import VOCAB, make_model  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("base") / "m"))


def resave(src: str, dst: str, dtype, **kw) -> str:
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.to(dtype).save_pretrained(dst, safe_serialization=True, **kw)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(src, f)) as a, open(os.path.join(dst, f), "w") as b:
            b.write(a.read())
    return dst


def logits(folder: str, ids) -> np.ndarray:
    return kvinfer.LLM(folder, device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker()).logits(ids)


@pytest.mark.parametrize("form", ["sharded", "bf16", "fp32"])
def test_checkpoint_forms_give_the_same_model(form, base, tmp_path):
    dtype = {"sharded": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[form]
    extra = {"max_shard_size": "100KB"} if form == "sharded" else {}
    folder = resave(base, str(tmp_path / form), dtype, **extra)
    if form == "sharded":
        assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
        assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 1
    ids = np.random.default_rng(0).integers(1, VOCAB, size=20).tolist()
    ours = logits(folder, ids)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    assert ours.shape == want.shape and np.isfinite(ours).all()
    # bf16 -> fp16 is exact for these weights; fp32 -> fp16 rounds (the reference keeps fp32)
    tol = 2e-2 if form == "fp32" else 5e-3
    assert np.abs(ours - want).max() / np.abs(want).max() < tol
    if form == "sharded":  # the same fp16 tensors, split differently: the same logits, bit for bit
        np.testing.assert_array_equal(ours, logits(base, ids))
