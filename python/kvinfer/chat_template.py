"""Chat templates, rendered as transformers' apply_chat_template renders them: the template from
chat_template.jinja, chat_template.json or tokenizer_config.json; a sandboxed jinja2 environment
configured like transformers' (trim_blocks, lstrip_blocks, loop controls, raise_exception,
strftime_now, tojson without ASCII escaping); messages with None-valued keys dropped and reasoning
fields aliased; the special tokens and any extra keyword arguments (e.g. enable_thinking) passed to
the template. Tokenize the result without adding special tokens: the template already holds them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kvinfer.jsonfile import read_json_object

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' names, standard one first


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the file it came from, for messages
    text: str

    def render(self, messages: list[dict[str, Any]], special_tokens: dict[str, str], add_generation_prompt: bool = True,
               tools: list[dict] | None = None, documents: list[dict] | None = None, **kwargs: Any) -> str:
        import jinja2

        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("chat messages must be a list of dicts ({'role': ..., 'content': ...})")
        chat = [_aliased({k: v for k, v in m.items() if v is not None}) for m in messages]
        try:
            compiled = _compile(self.text)
        except jinja2.TemplateError as e:
            raise ValueError(f"the chat template of {self.source} does not compile: {type(e).__name__}: {e}") from None
        try:
            return compiled.render(messages=_plain(chat), tools=_plain(tools), documents=_plain(documents),
                                              add_generation_prompt=add_generation_prompt,
                                              **_plain({**special_tokens, **kwargs}))
        except jinja2.TemplateError as e:
            raise ValueError(f"the chat template of {self.source} failed: {type(e).__name__}: {e}") from None


def load_chat_template(folder: str, tokenizer_config: dict[str, Any]) -> ChatTemplate | None:
    """The folder's default chat template: chat_template.jinja (what transformers 5 writes), then
    chat_template.json, then tokenizer_config.json's chat_template (a string, or named templates of
    which "default" is taken)."""
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return ChatTemplate(path, f.read())
    for path, data in ((os.path.join(folder, "chat_template.json"), None),
                       (os.path.join(folder, "tokenizer_config.json"), tokenizer_config)):
        if data is None:
            if not os.path.isfile(path):
                continue
            data = read_json_object(path)
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, list):  # [{name, template}, ...]
            if not all(isinstance(t, dict) for t in template):
                raise ValueError(f"{path}: chat_template must be a string or a list of {{name, template}} objects")
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        if template is not None and not isinstance(template, str):
            raise ValueError(f"{path}: chat_template must be a string")
        if template:
            return ChatTemplate(path, template)
    return None


def _aliased(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value: Any) -> Any:
    """Only plain JSON-like data reaches the sandbox (subclasses of str/int/float lose their methods)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


_COMPILED: dict[str, Any] = {}


def _compile(text: str):
    if text not in _COMPILED:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _COMPILED[text] = env.from_string(text)
    return _COMPILED[text]
