"""Tokenizer of a model folder: tokenizer.json through the `tokenizers` library, special tokens
and the chat template from tokenizer_config.json, end-of-sequence ids from config.json and
generation_config.json. Streaming detokenization emits only complete characters."""

from __future__ import annotations

import json
import os
from typing import Any


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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

        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer.json not found in {folder}")
        try:
            self._tok = HFTokenizer.from_file(path)
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise ValueError(f"{path} cannot be loaded: {e}") from None
        self.config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        self.chat_template = self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # [{name, template}, ...]: take "default"
            if not all(isinstance(t, dict) for t in self.chat_template):
                raise ValueError(f"{folder}/tokenizer_config.json: chat_template must be a string or a list of "
                                 "{name, template} objects")
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise ValueError(f"{folder}/tokenizer_config.json: chat_template must be a string")
        model_cfg = _read_json(os.path.join(folder, "config.json"))
        gen_cfg = _read_json(os.path.join(folder, "generation_config.json"))
        self.eos_token_ids = (_ids(gen_cfg.get("eos_token_id"), f"{folder}/generation_config.json") |
                              _ids(model_cfg.get("eos_token_id"), f"{folder}/config.json"))
        eos = self._token_text("eos_token")
        if eos is not None and self._tok.token_to_id(eos) is not None:
            self.eos_token_ids.add(self._tok.token_to_id(eos))

    def _token_text(self, key: str) -> str | None:
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ValueError("this model's tokenizer_config.json has no chat_template")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self._token_text("bos_token") or "", eos_token=self._token_text("eos_token") or "")
        except jinja2.TemplateError as e:
            raise ValueError(f"the chat template of this model failed: {type(e).__name__}: {e}") from None


class StreamDecoder:
    """Incremental detokenizer: feed token ids, get the new text. Text is decoded over a short
    window of earlier tokens (so spacing rules that look at neighbours apply) and held back while
    it ends in an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0    # tokens already turned into emitted text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], self.skip)
        after = self.tokenizer.decode(self.ids[self.prefix:], self.skip)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""
