"""Chat templates render as transformers renders them: for templates written here (covering
whitespace control, loop controls, raise_exception, strftime_now, tojson without ASCII escaping,
tools, documents, extra keyword arguments, content given as a list of text parts, the special
tokens), kvinfer's text and ids equal transformers' apply_chat_template on the same folder, from
each of the files a template can come from. A folder without tokenizer.json loads for token ids."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import kvinfer  # noqa: E402
from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from kvinfer.tokenizer import Tokenizer  # noqa: E402
from tiny_models import make_model  # noqa: E402

CHATML = """{%- if tools %}<tools>{{ tools | tojson }}</tools>
{% endif %}
{%- for m in messages %}
  {%- if m.role == 'system' and loop.first %}<sys>{{ m.content }}</sys>
  {%- continue %}
  {%- endif %}
  {%- if m.role not in ['user', 'assistant'] %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}
  <{{ m.role }}>{{ m.content }}{{ eos_token }}
  {%- if loop.index >= 6 %}{% break %}{% endif %}
{% endfor %}
{%- if add_generation_prompt %}<assistant>{% endif %}"""

LLAMA3 = """{{- bos_token }}
{%- set year = strftime_now("%Y") %}
{%- if documents %}{% for d in documents %}[{{ d.title }}: {{ d.text }}]{% endfor %}{% endif %}
{%- for message in messages %}
{{ message['role'] + ' (' + year + '): ' }}
{%- if message['content'] is string %}{{ message['content'] | trim }}{% else %}
{%- for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}
{%- endif %}{{ eos_token }}
{% endfor %}
{%- if add_generation_prompt %}assistant:{% if enable_thinking is defined and not enable_thinking %} (no thinking){% endif %}{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there, fox!"}],
    [{"role": "system", "content": "Be brief. Ünïcödé ✓"}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4", "tool_calls": None}, {"role": "user", "content": "  and 3+3?  "}],
    [{"role": "user", "content": [{"type": "text", "text": "The quick "}, {"type": "text", "text": "brown dog"}]}],
]
TOOLS = [{"type": "function", "function": {"name": "météo", "description": "the weather in a city (°C)",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
DOCS = [{"title": "Zoo", "text": "the lazy dog sleeps"}]


def with_template(src: str, dst: str, where: str, template: str) -> str:
    shutil.copytree(src, dst)
    cfg_path = os.path.join(dst, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg.pop("chat_template", None)
    cfg["bos_token"] = "<eos>"
    if where == "tokenizer_config":
        cfg["chat_template"] = [{"name": "default", "template": template}, {"name": "other", "template": "x"}]
    elif where == "json":
        json.dump({"chat_template": template}, open(os.path.join(dst, "chat_template.json"), "w"))
    else:
        open(os.path.join(dst, "chat_template.jinja"), "w").write(template)
    json.dump(cfg, open(cfg_path, "w"))
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model("llama_gqa3", str(tmp_path_factory.mktemp("chat") / "m"))


@pytest.mark.parametrize("where", ["jinja", "json", "tokenizer_config"])
@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_rendering_equals_transformers(base, tmp_path, where, name):
    template = {"chatml": CHATML, "llama3": LLAMA3}[name]
    folder = with_template(base, str(tmp_path / f"{name}-{where}"), where, template)
    ours = Tokenizer(folder)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    hf_kw = {"chat_template": template} if where == "json" else {}  # (its tokenizers read no chat_template.json)
    for messages in CONVERSATIONS:
        for kw in ({"add_generation_prompt": True}, {"add_generation_prompt": False},
                   {"add_generation_prompt": True, "tools": TOOLS, "documents": DOCS, "enable_thinking": False}):
            if name == "chatml" and isinstance(messages[0]["content"], list):
                continue  # that template prints content as text
            text = ours.apply_chat_template(messages, **kw)
            assert text == hf.apply_chat_template(messages, tokenize=False, **kw, **hf_kw), (messages, kw)
            ids = hf.apply_chat_template(messages, tokenize=True, **kw, **hf_kw)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            assert ours.encode(text, add_special_tokens=False) == list(ids)
    assert "Ünïcödé" in ours.apply_chat_template(CONVERSATIONS[1]) or name == "llama3"


def test_template_errors_name_the_template(base, tmp_path):
    folder = with_template(base, str(tmp_path / "t"), "jinja", CHATML)
    tok = Tokenizer(folder)
    with pytest.raises(ValueError, match=r"the chat template of .*chat_template.jinja failed: .*unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    broken = with_template(base, str(tmp_path / "b"), "jinja", "{% for m in messages %}")
    with pytest.raises(ValueError, match=r"the chat template of .*chat_template.jinja does not compile"):
        Tokenizer(broken).apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_uses_the_jinja_template_and_no_double_bos(base, tmp_path):
    folder = with_template(base, str(tmp_path / "c"), "jinja", LLAMA3)
    llm = LLM(folder, device="cpu", max_context=128, max_batch=1, tracker=kvinfer.VramTracker())
    out = llm.chat([{"role": "user", "content": "Hello"}], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True),
                   enable_thinking=False)
    eos = Tokenizer(folder).encode("<eos>", add_special_tokens=False)
    prompt = out.prompt_token_ids
    assert prompt[: len(eos)] == eos and prompt[len(eos): 2 * len(eos)] != eos  # one BOS, from the template
    assert len(out.token_ids) == 3


def test_a_folder_without_tokenizer_json_runs_token_ids(base, tmp_path):
    folder = str(tmp_path / "ids")
    shutil.copytree(base, folder)
    os.remove(os.path.join(folder, "tokenizer.json"))
    llm = LLM(folder, device="cpu", max_context=64, max_batch=1, tracker=kvinfer.VramTracker())
    ids = [3, 4, 5, 6]
    out = llm.generate([ids], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and out.text == ""
    assert llm.logits(ids).shape == (4, llm.config.vocab_size)
    with pytest.raises(ValueError, match="has no tokenizer.json: give prompts as token ids"):
        llm.generate("text")
    assert np.isfinite(llm.logits(ids)).all()
