"""A prompt's token ids: text through the tokenizer, or ids the caller gives, checked."""

from __future__ import annotations

import array
from typing import Sequence as Seq

import numpy as np

from kvinfer import _core
from kvinfer.tokenizer import Tokenizer

Prompt = str | Seq[int]


def encode_prompt(prompt: Prompt, tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    """A prompt's token ids: text encoded, or ids checked to be integers in [0, vocab_size)."""
    return _checked(prompt, tokenizer, vocab_size)[0]


def encode_prompt_array(prompt: Prompt, tokenizer: Tokenizer, vocab_size: int) -> tuple[list[int], np.ndarray | None]:
    """encode_prompt, and the ids as an int32 array where the check made one on the way (ids given
    as integers; None for text): a long prompt's steps take their inputs from it without another
    pass over the list."""
    ids, packed = _checked(prompt, tokenizer, vocab_size)
    return ids, None if packed is None else packed.astype(np.int32, copy=False)


def _checked(prompt: Prompt, tokenizer: Tokenizer, vocab_size: int) -> tuple[list[int], np.ndarray | None]:
    packed = None
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif (fast := _core.pack_token_ids(prompt, vocab_size)) is not None and len(fast):
        return list(prompt), fast  # exact ints, all in range (the common case, in one pass in C)
    else:
        ids, packed = _token_ids(prompt)
    if not ids:
        raise ValueError("prompt is empty")
    low, high = (min(ids), max(ids)) if packed is None else (packed.min(), packed.max())
    if not (0 <= low and high < vocab_size):
        bad = next(t for t in ids if not 0 <= t < vocab_size)
        raise ValueError(f"token id {bad} is out of range [0, {vocab_size})")
    return ids, packed


def _token_ids(prompt) -> tuple[list[int], np.ndarray | None]:
    """A prompt of token ids as Python ints, and as an integer array where they all fit 64 bits;
    ValueError unless every id is an integer (a bool is not). This sits before a long prompt's first
    token, so the common case is one pass in C: array.array takes exactly the objects that are
    integers (int, numpy integers, anything with __index__); only where some id is 0 or 1 are the
    types looked at, to refuse True and False, so what is accepted never depends on the values."""
    if isinstance(prompt, np.ndarray):  # checked by its dtype, not per element
        if prompt.ndim != 1 or prompt.dtype.kind not in "iu":
            raise ValueError(f"a prompt of token ids must hold integers (got a {prompt.ndim}-D {prompt.dtype} array)")
        return prompt.tolist(), prompt
    if not isinstance(prompt, (list, tuple)):  # iterators once only; bytes would be read as raw memory
        prompt = list(prompt)
    try:
        packed = np.frombuffer(array.array("q", prompt), np.int64)
    except OverflowError:  # an integer past 64 bits: out of range, which the caller says
        packed = None
    except TypeError:
        raise ValueError("a prompt of token ids must hold integers") from None
    if packed is None or (packed <= 1).any():
        kinds = set(map(type, prompt))
        if any(issubclass(k, bool) for k in kinds) or (packed is None and not all(
                issubclass(k, (int, np.integer)) or hasattr(k, "__index__") for k in kinds)):
            raise ValueError("a prompt of token ids must hold integers")
    if packed is None:
        return [int(t) for t in prompt], None
    return packed.tolist(), packed
