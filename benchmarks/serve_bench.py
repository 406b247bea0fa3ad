"""Serving benchmark with the method of `vllm bench serve`: N streaming completion requests with
Poisson arrivals at a rate (or all at once), prompt and output lengths drawn with a fixed seed
(prompts are random token ids, outputs exact through ignore_eos). Reports TTFT, TPOT and ITL
(median, p99), requests/s and output tokens/s.

    python benchmarks/serve_bench.py --url http://127.0.0.1:8000 --num-requests 200 --rate 8
    python benchmarks/serve_bench.py --serve Llama-3.2-1B --device cuda:0 --max-batch 64 \\
        --num-requests 1000 --prompt-len 64 1024 --output-len 16 512 --baseline
`--serve MODEL` starts `kvinfer serve` in its own process (the client here must not compete with
the server for one interpreter's lock) on random weights of a benchmark shape (benchmarks/gpu_bench.py);
the requests go out from --client-procs processes, each reading its streams as raw bytes (an HTTP
library that parses every chunk was the limit near 15k tokens/s);
`--single-process` serves with the engine loop in the server's process (the default gives it one of its own);
`--baseline` then also times LLM.generate on the same requests: in waves of max_batch that each run
until their longest request ends (only the tokens each request asked for count), as generate ran
before it joined the serving loop, and all at once (the server's engine loop without HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass
class Result:
    prompt_len: int
    output_len: int
    start: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.chunk_times[-1] - self.start

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.completion_tokens - 1) if self.completion_tokens > 1 else None


def workload(n: int, prompt_len: tuple[int, int], output_len: tuple[int, int], vocab: int, seed: int,
             shared_prefix: int = 0):
    rng = np.random.default_rng(seed)
    prefix = rng.integers(1, vocab, shared_prefix).tolist()
    lens = rng.integers(prompt_len[0], prompt_len[1] + 1, n), rng.integers(output_len[0], output_len[1] + 1, n)
    return [(prefix + rng.integers(1, vocab, p).tolist(), int(o)) for p, o in zip(*lens)]


async def one(url: str, model: str, prompt: list[int], out: int, r: Result) -> None:
    """One streamed completion over a connection of its own, read as raw bytes: an event's time is
    when the read that completed it returned, and only the usage event is parsed (a client that
    parses every chunk as JSON through an HTTP library spends ~50 us a chunk, which at tens of
    thousands of tokens a second is the benchmark's limit, not the server's)."""
    u = urllib.parse.urlsplit(url)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": out, "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    head = (f"POST {u.path.rstrip('/')}/v1/completions HTTP/1.1\r\nHost: {u.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    r.start = time.time()  # the wall clock: every client process's times compare
    try:
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
    except OSError as e:
        r.error = repr(e)
        return
    try:
        writer.write(head.encode() + body)
        status = await reader.readline()
        if status.split(b" ")[1:2] != [b"200"]:
            r.error = f"{status.decode().strip()}: {(await reader.read(300))!r}"
            return
        while await reader.readline() not in (b"\r\n", b""):  # headers
            pass
        pending = b""
        while chunk := await reader.read(1 << 16):
            t = time.time()
            # server-sent events end in a blank line (JSON escapes newlines, so none is inside one);
            # the chunked encoding's size lines sit between events and are skipped
            *events, pending = (pending + chunk).split(b"\n\n")
            for event in events:
                at = event.find(b"data: ")
                if at < 0:
                    continue
                if b'"choices": [{' in event:
                    r.chunk_times.append(t)
                elif b'"usage"' in event:
                    r.completion_tokens = json.loads(event[at + 6:])["usage"]["completion_tokens"]
    except OSError as e:
        r.error = repr(e)
    finally:
        writer.close()


async def send_all(url: str, model: str, requests, arrivals: list[float], inbox, out) -> list[Result]:
    """Says it is ready once a first request went through (lazy imports and the first connection
    are not timed), then sends each request at the start time from `inbox` plus its arrival offset
    (wall clock) and streams its answer."""
    results = [Result(len(p), o) for p, o in requests]
    warm = Result(8, 1)
    await one(url, model, requests[0][0][:8], 1, warm)
    if warm.error:
        raise SystemExit(f"the first request failed: {warm.error}")
    out.put("ready")
    start = inbox.get()
    tasks = []
    for (p, o), at, r in zip(requests, arrivals, results):
        if (wait := start + at - time.time()) > 0:  # (a request already due goes out at once)
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(url, model, p, o, r)))
    await asyncio.gather(*tasks)
    return results


def client_process(url: str, model: str, requests, arrivals: list[float], inbox, out) -> None:
    out.put(asyncio.run(send_all(url, model, requests, arrivals, inbox, out)))


def run(url: str, model: str, requests, rate: float, seed: int, procs: int) -> tuple[list[Result], float]:
    """The requests, arriving as a Poisson process (all at once for rate inf), sent from `procs`
    client processes that take every procs-th request: parsing a few hundred thousand streamed
    chunks takes one Python process longer than the server takes to produce them."""
    gaps = np.random.default_rng(seed + 1).exponential(1 / rate, len(requests)) if rate != float("inf") else None
    arrivals = np.cumsum(gaps).tolist() if gaps is not None else [0.0] * len(requests)
    ctx = multiprocessing.get_context("spawn")
    inboxes, queues = [ctx.SimpleQueue() for _ in range(procs)], [ctx.SimpleQueue() for _ in range(procs)]
    workers = [ctx.Process(target=client_process, args=(url, model, requests[i::procs], arrivals[i::procs], inbox, q))
               for i, (inbox, q) in enumerate(zip(inboxes, queues))]
    for w in workers:
        w.start()
    for q in queues:  # every client process is up
        assert q.get() == "ready"
    start = time.time() + 0.1
    for inbox in inboxes:
        inbox.put(start)
    parts = [q.get() for q in queues]
    for w in workers:
        w.join()
    results = [None] * len(requests)
    for i, part in enumerate(parts):
        results[i::procs] = part
    end = max((r.chunk_times[-1] for r in results if r.chunk_times), default=start)
    return results, end - start


def report(results: list[Result], seconds: float, label: str) -> None:
    ok = [r for r in results if r.error is None and r.chunk_times]
    failed = len(results) - len(ok)

    def ms(values) -> str:
        v = sorted(values)
        return f"{1e3 * statistics.median(v):8.1f} | {1e3 * v[min(len(v) - 1, int(0.99 * len(v)))]:8.1f}" if v else "- | -"

    itl = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tokens = sum(r.completion_tokens for r in ok)
    print(f"| {label} | {len(ok)} | {failed} | {len(ok) / seconds:7.2f} | {tokens / seconds:9.1f} | "
          f"{ms([r.ttft for r in ok])} | {ms([r.tpot for r in ok if r.tpot is not None])} | {ms(itl)} |")
    for r in results:
        if r.error:
            print(f"# failed: {r.error}")
            break


def baseline(llm, requests) -> None:
    """LLM.generate on the same requests in waves of max_batch: a wave runs until its longest request
    ends, and each request's tokens beyond what it asked for do not count."""
    from kvinfer.sampling import SamplingParams

    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(requests), llm.max_batch):
        wave = requests[i:i + llm.max_batch]
        outs = llm.generate([p for p, _ in wave], SamplingParams(max_tokens=max(o for _, o in wave), temperature=0,
                                                                 ignore_eos=True))
        tokens += sum(min(len(r.token_ids), o) for r, (_, o) in zip(outs, wave))
    seconds = time.perf_counter() - t0
    print(f"| LLM.generate waves | {len(requests)} | 0 | {len(requests) / seconds:7.2f} | {tokens / seconds:9.1f} "
          "| - | - | - | - | - | - |")
    t0 = time.perf_counter()  # the same engine loop as the server's, without HTTP
    outs = llm.generate([p for p, _ in requests], [SamplingParams(max_tokens=o, temperature=0, ignore_eos=True)
                                                   for _, o in requests])
    seconds, tokens = time.perf_counter() - t0, sum(len(r.token_ids) for r in outs)
    print(f"| LLM.generate all at once | {len(requests)} | 0 | {len(requests) / seconds:7.2f} | "
          f"{tokens / seconds:9.1f} | - | - | - | - | - | - |")


def full_vocab_tokenizer(folder: str) -> None:
    """Replaces the random model's small test tokenizer with one whose every id is a word, so every
    sampled token is text that the server streams (ids the test tokenizer lacks decode to nothing,
    and a chunk without text is not sent)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
    tok = Tokenizer(models.WordLevel({"<eos>": 0, **{f"w{i}": i for i in range(1, vocab)}}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(folder, "tokenizer.json"))


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not answer {url}/health within {seconds:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None, help="a running server (default: --serve one here)")
    ap.add_argument("--model", default=None, help="the served model's name (default: the server's first)")
    ap.add_argument("--serve", default=None, help="start a server here on random weights of this benchmark shape")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--max-step-tokens", type=int, default=512, help="as kvinfer serve's")
    ap.add_argument("--max-prefill-while-decoding", type=int, default=None, help="as kvinfer serve's")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=float("inf"), help="requests/s (Poisson); inf: all at once")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[64, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[16, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shared-prefix", type=int, default=0, help="tokens every prompt starts with (a system prompt)")
    ap.add_argument("--no-prefix-caching", action="store_true", help="the served engine computes every prompt in full")
    ap.add_argument("--baseline", action="store_true", help="also LLM.generate in waves (with --serve)")
    ap.add_argument("--no-batch-invariant", action="store_true",
                    help="as kvinfer serve's (cuBLAS for 16+ decode rows, decodes and prompt chunks in one step)")
    ap.add_argument("--vocab", type=int, default=32000, help="prompt token ids are drawn below this (with --url)")
    ap.add_argument("--single-process", action="store_true", help="as kvinfer serve's (with --serve)")
    ap.add_argument("--client-procs", type=int, default=1, help="client processes sending the requests")
    args = ap.parse_args()
    server = None
    if args.serve:
        import tempfile

        from gpu_bench import random_model

        folder = tempfile.mkdtemp()
        random_model(args.serve, folder)
        full_vocab_tokenizer(folder)
        server = subprocess.Popen([sys.executable, "-m", "kvinfer", "serve", "--model", folder, "--served-model-name",
                                   args.serve, "--device", args.device, "--port", str(args.port), "--max-batch",
                                   str(args.max_batch), "--max-context", str(args.max_context), "--max-step-tokens",
                                   str(args.max_step_tokens)] + (["--no-prefix-caching"] if args.no_prefix_caching else [])
                                  + (["--max-prefill-while-decoding", str(args.max_prefill_while_decoding)]
                                     if args.max_prefill_while_decoding else [])
                                  + (["--no-batch-invariant"] if args.no_batch_invariant else [])
                                  + (["--single-process"] if args.single_process else []))
        args.url, args.model = f"http://127.0.0.1:{args.port}", args.serve
        wait_until_up(args.url, server)
    model = args.model or httpx.get(args.url + "/v1/models").json()["data"][0]["id"]
    vocab = json.load(open(os.path.join(folder, "config.json")))["vocab_size"] if args.serve else args.vocab
    requests = workload(args.num_requests, tuple(args.prompt_len), tuple(args.output_len), vocab, args.seed,
                        args.shared_prefix)
    print(f"# {args.num_requests} requests, prompts {args.prompt_len[0]}-{args.prompt_len[1]} tokens after a shared "
          f"prefix of {args.shared_prefix}, outputs {args.output_len[0]}-{args.output_len[1]}, rate {args.rate}/s, "
          f"seed {args.seed}, model {model}, prefix caching {'off' if args.no_prefix_caching else 'on'}")
    print("| run | requests | failed | req/s | output tok/s | TTFT median ms | TTFT p99 ms | TPOT median ms "
          "| TPOT p99 ms | ITL median ms | ITL p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results, seconds = run(args.url, model, requests, args.rate, args.seed, args.client_procs)
    report(results, seconds, f"serve, rate {args.rate}")
    if server is not None:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        if args.baseline:
            from kvinfer.llm import LLM

            with LLM(folder, device=args.device, max_context=args.max_context, max_batch=args.max_batch,
                     max_step_tokens=args.max_step_tokens, batch_invariant=not args.no_batch_invariant) as llm:
                baseline(llm, requests)


if __name__ == "__main__":
    main()
