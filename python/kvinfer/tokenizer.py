"""Tokenizer of a model folder: tokenizer.json through the `tokenizers` library, special tokens from
tokenizer_config.json, the chat template (kvinfer.chat_template), end-of-sequence ids from
config.json and generation_config.json. A folder without tokenizer.json still loads, for prompts
given as token ids; text then fails with a clear error. Streaming detokenization emits only
complete characters."""

from __future__ import annotations

import os
from typing import Any

from kvinfer.chat_template import SPECIAL_TOKENS, load_chat_template
from kvinfer.jsonfile import read_json_object


def _read_json(path: str) -> dict[str, Any]:
    return read_json_object(path) if os.path.isfile(path) else {}


def _ids(value: Any, where: str) -> set[int]:
    if value is None:
        return set()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{where}: eos_token_id={value!r} must be a token id or a list of them")
    return set(values)


class Tokenizer:
    def __init__(self, folder: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.folder = folder
        path = os.path.join(folder, "tokenizer.json")
        self._tok = None
        if os.path.isfile(path):
            try:
                self._tok = HFTokenizer.from_file(path)
            except Exception as e:  # noqa: BLE001 - the library raises a bare Exception on malformed files
                raise ValueError(f"{path} cannot be loaded: {e}") from None
        self.config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        self.chat_template = load_chat_template(folder, self.config)
        model_cfg = _read_json(os.path.join(folder, "config.json"))
        gen_cfg = _read_json(os.path.join(folder, "generation_config.json"))
        self.eos_token_ids = (_ids(gen_cfg.get("eos_token_id"), f"{folder}/generation_config.json") |
                              _ids(model_cfg.get("eos_token_id"), f"{folder}/config.json"))
        eos = self._token_text("eos_token")
        if eos is not None and self._tok is not None and self._tok.token_to_id(eos) is not None:
            self.eos_token_ids.add(self._tok.token_to_id(eos))

    @property
    def has_text(self) -> bool:
        """Whether text can be encoded (the folder has tokenizer.json)."""
        return self._tok is not None

    def _text_tokenizer(self):
        if self._tok is None:
            raise ValueError(f"{self.folder} has no tokenizer.json: give prompts as token ids")
        return self._tok

    def _token_text(self, key: str) -> str | None:
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    @property
    def special_tokens(self) -> dict[str, str]:
        """The special tokens a chat template may refer to, as text."""
        return {k: v for k in SPECIAL_TOKENS if isinstance(v := self._token_text(k), str)}

    @property
    def vocab_size(self) -> int:
        return self._text_tokenizer().get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._text_tokenizer().encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._tok is None:
            return ""  # token ids in, token ids out: no text without a tokenizer
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, documents: list[dict] | None = None, **kwargs: Any) -> str:
        """The prompt text, as transformers' apply_chat_template(tokenize=False) renders it; encode it
        with add_special_tokens=False."""
        if self.chat_template is None:
            raise ValueError(f"{self.folder} has no chat template (chat_template.jinja, chat_template.json or "
                             "tokenizer_config.json)")
        return self.chat_template.render(messages, self.special_tokens, add_generation_prompt, tools, documents,
                                         **kwargs)


class StreamDecoder:
    """Incremental detokenizer: feed token ids, get the new text. Text is decoded over a short
    window of earlier tokens (so spacing rules that look at neighbours apply) and held back while
    it ends in an incomplete UTF-8 sequence: the `tokenizers` library's DecodeStream where it has
    one (the same algorithm, one native call a token), else the same here. DecodeStream refuses a
    token that changes text it already gave out (a byte-fallback tokenizer after a stray byte,
    say); this decoder then goes on the same way in Python, which emits what the window's text
    grew by."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0    # tokens already turned into emitted text
        self._stream = None
        if tokenizer._tok is not None:
            try:
                from tokenizers.decoders import DecodeStream
            except ImportError:  # tokenizers < 0.21
                pass
            else:
                self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self._stream is not None:
            try:
                piece = self._stream.step(self.tokenizer._tok, token_id)
            except Exception:  # noqa: BLE001 - the library raises a bare Exception ("Invalid prefix")
                self._stream = None
            else:
                if piece:  # the window moves as below
                    self.prefix, self.read = self.read, len(self.ids)
                return piece or ""
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], self.skip)
        after = self.tokenizer.decode(self.ids[self.prefix:], self.skip)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""
