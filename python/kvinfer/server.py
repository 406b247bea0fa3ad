"""An OpenAI-compatible HTTP server (FastAPI) over the serving engine: /v1/completions and
/v1/chat/completions, streamed as server-sent events or whole; /v1/models, /health and /metrics
(Prometheus). A request's choices run as sequences of the engine's continuous batch; a client that
disconnects mid-stream aborts them within one step."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvinfer import openai_protocol as api
from kvinfer.serving import Delta, EngineStoppedError, QueueFullError, ServingEngine

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, engine: ServingEngine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("kvinfer_requests", "finished requests by HTTP status", ["status"], registry=r)
        self.prompt_tokens = Counter("kvinfer_prompt_tokens", "prompt tokens of accepted requests", registry=r)
        self.generation_tokens = Counter("kvinfer_generation_tokens", "generated tokens", registry=r)
        self.ttft = Histogram("kvinfer_time_to_first_token_seconds", "request start to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kvinfer_inter_token_latency_seconds", "time between a sequence's tokens",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kvinfer_e2e_request_latency_seconds", "request start to its last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        running = Gauge("kvinfer_running_sequences", "sequences in the batch", registry=r)
        waiting = Gauge("kvinfer_waiting_sequences", "sequences waiting for a slot", registry=r)
        slots = Gauge("kvinfer_kv_slots_used", "sequence slots in use", registry=r)
        blocks = Gauge("kvinfer_kv_blocks_used", "KV-cache blocks referenced by sequences", registry=r)
        total = Gauge("kvinfer_kv_blocks", "KV-cache blocks in the pool", registry=r)
        hits = Gauge("kvinfer_prefix_cache_hit_rate", "prompt tokens found in the prefix cache / prompt "
                     "tokens looked up", registry=r)
        # the engine's numbers as of the scrape: one stats() a scrape (a round trip to an engine
        # process), zeros once the engine has stopped
        self._engine, self._stats, self._stats_at, self._stats_lock = engine, {}, -1.0, threading.Lock()
        for gauge, key in ((running, "running"), (waiting, "waiting"), (slots, "slots_used"),
                           (blocks, "kv_blocks_used"), (total, "kv_blocks")):
            gauge.set_function(lambda key=key: self.stats().get(key, 0))
        hits.set_function(lambda: self.stats().get("prefix_hit_tokens", 0) /
                          max(1, self.stats().get("prefix_query_tokens", 0)))

    def stats(self) -> dict:
        with self._stats_lock:
            now = time.monotonic()
            if now - self._stats_at > 0.05:
                try:
                    self._stats = self._engine.stats()
                except Exception:  # noqa: BLE001 - a stopped engine process: no numbers, not a failed scrape
                    self._stats = {}
                self._stats_at = now
            return self._stats


class Mailbox:
    """Deltas from the engine thread to the event loop's request queues, the loop woken once per batch
    (a step's deltas for 64 streams are one wake-up, not 64): the engine thread must not wait on
    the event loop, nor the loop on the interpreter lock the engine thread needs."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._lock, self._pending = loop, threading.Lock(), []

    def deliver(self, q: asyncio.Queue, item) -> None:  # the engine thread
        with self._lock:
            self._pending.append((q, item))
            first = len(self._pending) == 1
        if first:
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:  # the event loop
        with self._lock:
            pending, self._pending = self._pending, []
        for q, item in pending:
            q.put_nowait(item)


def merged(a: Delta, b: Delta) -> Delta:
    """Two consecutive deltas of one request as one (the later one's finish, counts and error)."""
    return Delta(b.request_id, a.text + b.text, a.token_ids + b.token_ids, b.finish_reason, b.prompt_tokens,
                 b.completion_tokens, b.error, (a.logprobs or []) + (b.logprobs or []) or None, b.cause)


def create_app(engine: ServingEngine, model_name: str, api_key: str | None = None) -> FastAPI:
    llm = engine.llm
    app = FastAPI(title="kvinfer", version="0.1.0")
    mailboxes: dict[asyncio.AbstractEventLoop, Mailbox] = {}

    def token_text(token_id: int) -> str:
        return llm.tokenizer.decode([token_id], skip_special_tokens=False)
    metrics = Metrics(engine)

    def error(e: api.ApiError) -> JSONResponse:
        metrics.requests.labels(str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status)

    def check(request: Request, body: dict | None) -> None:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise api.ApiError(401, "Invalid API key", None, "authentication_error")
        if body is not None and body.get("model") not in (None, model_name):
            raise api.ApiError(404, f"The model `{body['model']}` does not exist (this server has `{model_name}`)",
                               "model", "NotFoundError")

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise api.ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise api.ApiError(400, "the request body must be a JSON object")
        return body

    @app.get("/health")
    async def health():
        if engine.closed:  # stopped, or its process ended: a load balancer should stop sending here
            return JSONResponse({"status": "the engine has stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check(request, None)
        except api.ApiError as e:
            return error(e)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": api.now(),
                                            "owned_by": "kvinfer", "max_model_len": llm.max_context}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await json_body(request)
            check(request, body)
            prompts = api.completion_prompts(body, llm._encode)
            job = api.parse_job(body, prompts, llm.max_context, 16)
        except api.ApiError as e:
            return error(e)
        return await run(request, job, "cmpl", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await json_body(request)
            check(request, body)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise api.ApiError(400, "messages must be a non-empty list of objects", "messages")
            try:
                text = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
                prompt = llm.tokenizer.encode(text, add_special_tokens=False)
            except ValueError as e:
                raise api.ApiError(400, str(e), "messages") from None
            job = api.parse_job(body, [prompt], llm.max_context, None, chat=True)
        except api.ApiError as e:
            return error(e)
        return await run(request, job, "chatcmpl", chat=True)

    async def run(request: Request, job: api.Job, prefix: str, chat: bool):
        rid = f"{prefix}-{secrets.token_hex(12)}"
        loop, deltas = asyncio.get_running_loop(), asyncio.Queue()
        mailbox = mailboxes.get(loop) or mailboxes.setdefault(loop, Mailbox(loop))
        started, ids = time.perf_counter(), []
        try:
            for i, params in enumerate(job.params):
                def deliver(d: Delta, index=i) -> None:
                    mailbox.deliver(deltas, (index, d))
                ids.append(engine.submit(job.prompts[i // job.n], params, deliver))
        except (QueueFullError, ValueError) as e:
            for request_id in ids:
                engine.abort(request_id)
            unavailable = isinstance(e, (QueueFullError, EngineStoppedError)) or engine.closed
            return error(api.ApiError(503 if unavailable else 400, str(e)))
        prompt_tokens = sum(len(p) for p in job.prompts)
        metrics.prompt_tokens.inc(prompt_tokens)
        events = collect(deltas, len(ids), started)
        if job.stream:
            return StreamingResponse(sse(rid, job, chat, events, ids, prompt_tokens), media_type="text/event-stream")
        choices = [{"index": i, "text": "", "finish_reason": None} for i in range(len(ids))]
        entries: list[list] = [[] for _ in ids]  # each choice's log-probabilities, when asked
        completion_tokens = 0

        async def abort_on_disconnect() -> None:  # a whole response: nobody waits for it any more
            while not await request.is_disconnected():
                await asyncio.sleep(0.1)
            for request_id in ids:
                engine.abort(request_id)

        watcher = asyncio.create_task(abort_on_disconnect())
        try:
            async for index, d in events:
                choices[index]["text"] += d.text
                entries[index] += d.logprobs or []
                if d.finish_reason:
                    if d.error:
                        return error(api.ApiError(500, d.error, None, "server_error"))
                    choices[index]["finish_reason"] = d.finish_reason
                    completion_tokens += d.completion_tokens
        finally:
            watcher.cancel()
            for request_id in ids:
                engine.abort(request_id)  # a no-op for finished ones; frees the rest if we were cancelled
        if any(c["finish_reason"] == "abort" for c in choices):
            metrics.requests.labels("499").inc()  # the client went away (nginx's code for it)
            return JSONResponse({"error": {"message": "the client disconnected", "type": "aborted", "code": 499}},
                                status_code=499)
        metrics.requests.labels("200").inc()
        if job.params[0].logprobs is not None:
            for c, e in zip(choices, entries):
                c["logprobs"] = api.chat_logprobs(e, token_text) if chat else api.completion_logprobs(e, token_text, 0)
        shape = api.chat_body if chat else api.completion_body
        return shape(rid, model_name, choices, api.usage(prompt_tokens, completion_tokens))

    async def collect(deltas: asyncio.Queue, count: int, started: float):
        """(choice index, Delta) until every choice has finished, timing tokens for the metrics."""
        last: dict[int, float] = {}
        while count:
            batch = {}  # what arrived since the last look, one delta per choice: one chunk to send
            index, d = await deltas.get()
            batch[index] = d
            while not deltas.empty():
                index, d = deltas.get_nowait()
                batch[index] = merged(batch[index], d) if index in batch else d
            t = time.perf_counter()
            for index, d in batch.items():
                if d.token_ids:
                    (metrics.itl.observe(t - last[index]) if index in last else metrics.ttft.observe(t - started))
                    for _ in d.token_ids[1:]:  # tokens that came together reach the client together
                        metrics.itl.observe(0.0)
                    last[index] = t
                    metrics.generation_tokens.inc(len(d.token_ids))
                if d.finish_reason:
                    count -= 1
                    metrics.e2e.observe(t - started)
                yield index, d

    async def sse(rid: str, job: api.Job, chat: bool, events, ids: list[str], prompt_tokens: int):
        def data(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        completion_tokens, status = 0, "200"
        offsets = [0] * len(ids)  # characters streamed per choice (completions' text_offset)
        try:
            if chat:
                for i in range(len(ids)):
                    yield data(api.chat_chunk(rid, model_name, i, {"role": "assistant", "content": ""}, None))
            async for index, d in events:
                if d.error:
                    status = "500"
                    yield data({"error": {"message": d.error, "type": "server_error", "code": 500}})
                    continue
                if d.finish_reason:
                    completion_tokens += d.completion_tokens
                if d.text or d.finish_reason or d.logprobs:
                    lp = None
                    if d.logprobs:
                        lp = api.chat_logprobs(d.logprobs, token_text) if chat else \
                            api.completion_logprobs(d.logprobs, token_text, offsets[index])
                    offsets[index] += len(d.text)
                    if chat:
                        yield data(api.chat_chunk(rid, model_name, index, {"content": d.text} if d.text else {},
                                                  d.finish_reason, lp))
                    else:
                        yield data(api.completion_chunk(rid, model_name, index, d.text, d.finish_reason, lp))
            if job.include_usage:
                obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                       "created": api.now(), "model": model_name, "choices": [],
                       "usage": api.usage(prompt_tokens, completion_tokens)}
                yield data(obj)
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: its sequences end within one step
            for request_id in ids:
                engine.abort(request_id)
            metrics.requests.labels(status).inc()

    return app
