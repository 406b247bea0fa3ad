"""Streaming detokenization (kvinfer.tokenizer.StreamDecoder) on a byte-fallback tokenizer (Llama-2
and Mistral style): bytes that complete a character come out as that character, and a token that
changes text already given out (a stray byte, then more text) never raises; the library's
DecodeStream and the Python path give the same text wherever both run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvinfer.tokenizer import StreamDecoder, Tokenizer

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def byte_fallback(tmp_path_factory) -> Tokenizer:
    from tokenizers import decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for word in ("▁", "x", "y", "▁x", "▁y", "hello", "▁hello"):
        vocab[word] = len(vocab)
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    folder = tmp_path_factory.mktemp("byte_fallback")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return Tokenizer(str(folder))


def ids_of(tok: Tokenizer, pieces: list[str]) -> list[int]:
    return [tok._tok.token_to_id(p) for p in pieces]


def stream(tok: Tokenizer, ids: list[int], native: bool) -> list[str]:
    d = StreamDecoder(tok)
    if not native:
        d._stream = None
    return [d.push(i) for i in ids]


def test_a_stray_byte_then_text_does_not_raise(byte_fallback):
    tok = byte_fallback
    ids = ids_of(tok, ["<0xC3>", "<0xA9>", "<0xE2>", "x", "▁hello"])  # "é", a lone lead byte, then text
    native, python = stream(tok, ids, True), stream(tok, ids, False)
    assert native == python
    assert native[:2] == ["", "é"] and "".join(native).startswith("é") and "hello" in "".join(native)


def test_random_byte_and_word_sequences(byte_fallback):
    tok = byte_fallback
    pool = ids_of(tok, ["<0xC3>", "<0xA9>", "<0xE2>", "<0x82>", "<0xAC>", "<0xF0>", "<0x9F>", "<0x98>",
                        "<0x80>", "x", "▁y", "▁hello", "</s>"])
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.choice(pool, size=int(rng.integers(1, 12))).tolist()
        native, python = stream(tok, ids, True), stream(tok, ids, False)
        assert "".join(native) == "".join(python), ids
    valid = ids_of(tok, ["▁hello", "<0xE2>", "<0x82>", "<0xAC>", "x", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁y"])
    assert "".join(stream(tok, valid, True)) == tok.decode(valid) == "hello€x😀 y"
