"""A prompt step finishes its last layer on the rows whose logits are wanted alone (run_decoder:
the layer's K/V are written for every row first; a chunk that samples nothing stops there). Those
rows must give what the same rows give in a step that computes every row, whichever rows they are,
for several sequences in one step, and after a chunk that sampled nothing."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DEVICES
from kvinfer import _core
from kvinfer.weights import load_weights
from tiny_models import VOCAB, make_model

CONTEXT = 64
# A row's result does not depend on the rows beside it on the CPU, nor in CUDA's skinny GEMMs
# (these steps' row counts); a tolerance at fp16 scale on CUDA all the same, so that a kernel
# choice by row count (cuBLAS from more rows) would not fail it
TOLERANCE = {"cpu": 1e-6, "cuda:0": 5e-3}


def i32(*v):
    return np.array(v, np.int32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("kept") / "llama_gqa3"))


def runner(folder, device):
    from kvinfer.config import model_config, read_config_json

    config = model_config(read_config_json(folder))
    r = _core.Runner(config, device, 8, CONTEXT, 64, None, False, 0, 16)
    load_weights(r, config, folder)
    return r


def step(r, tokens, starts, cached, slots, rows) -> np.ndarray:
    out = np.empty((len(rows), VOCAB), np.float32)
    r.step(np.asarray(tokens, np.int32), i32(*starts), i32(*cached), i32(*slots), i32(*rows), logits=out)
    return out


def relative(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("device", DEVICES)
def test_kept_rows_give_what_every_row_gives(folder, device, monkeypatch):
    monkeypatch.delenv("KVINFER_KEEP_ROWS", raising=False)  # (CUDA: =0 turns it off)
    r = runner(folder, device)
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, VOCAB, size=40), rng.integers(1, VOCAB, size=23)
    every_a = step(r, a, (0, 40), (0,), (0,), range(40))  # every row: the whole last layer
    every_b = step(r, b, (0, 23), (0,), (1,), range(23))
    tol = TOLERANCE[device]
    # the comparison can fail: rows of one prompt differ far beyond the tolerance
    assert relative(every_a[7], every_a[22]) > 100 * tol

    kept = step(r, a, (0, 40), (0,), (2,), (0, 7, 22, 39))  # four rows of one prompt
    assert relative(kept, every_a[[0, 7, 22, 39]]) <= tol
    two = step(r, np.concatenate([a, b]), (0, 40, 63), (0, 0), (2, 3), (39, 62))  # two prompts' last rows
    assert relative(two, np.stack([every_a[39], every_b[22]])) <= tol
    # a chunk that samples nothing (its last layer stops at the K/V), then the rest of the prompt
    assert step(r, a[:25], (0, 25), (0,), (2,), ()).shape == (0, VOCAB)
    last = step(r, a[25:], (0, 15), (25,), (2,), (14,))
    assert relative(last, every_a[39:]) <= tol
    assert (last.argmax(-1) == every_a[39:].argmax(-1)).all()
