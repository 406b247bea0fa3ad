"""The serving engine in a process of its own (what `kvinfer serve` runs): the HTTP server's event
loop and the engine loop then never take turns on one interpreter lock. A step hands tens of
streams a token each; in one process, formatting and sending those chunks and preparing the next
step share the lock, and the GPU waits for both (docs/dev/serving-notes.md). The engine process
owns the model (an LLM and its ServingEngine); this side keeps the tokenizer and the limits the
server checks requests against, and talks to it over a pipe: requests, aborts and stats queries
one way, each wake-up's deltas as one message the other way."""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
import signal
import sys
import threading
from dataclasses import dataclass

from kvinfer.prompt_ids import encode_prompt
from kvinfer.serving import Deliver, Delta, EngineStoppedError
from kvinfer.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP side needs of the model the engine process loaded."""
    folder: str
    device: str
    vocab_size: int
    max_context: int
    max_batch: int
    kv_blocks: int
    kv_tokens: int
    memory: dict[str, int]  # the memory plan: bytes by purpose
    graphs: str | None = None  # LLM.graphs_summary(): the CUDA graphs captured at load

    @staticmethod
    def of(llm) -> ModelInfo:
        plan = llm.plan
        return ModelInfo(llm.folder, llm.device, llm.config.vocab_size, llm.max_context, llm.max_batch,
                         plan.kv_blocks, plan.kv_tokens, dict(plan.by_purpose()), llm.graphs_summary())


class ModelView:
    """The model as the server reads it, in the HTTP process: its tokenizer and limits."""

    def __init__(self, info: ModelInfo):
        self.folder, self.device = info.folder, info.device
        self.max_context, self.max_batch, self.vocab_size = info.max_context, info.max_batch, info.vocab_size
        self.tokenizer = Tokenizer(info.folder)

    def _encode(self, prompt) -> list[int]:  # as LLM._encode
        return encode_prompt(prompt, self.tokenizer, self.vocab_size)


def _portable(e: BaseException) -> BaseException:
    """The exception itself where it crosses the pipe (pickles and unpickles), else a RuntimeError
    with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any failure either way
        return RuntimeError(f"{type(e).__name__}: {e}")


class _Outbox:
    """Deltas from the engine thread to the pipe, one message per wake-up of the sending thread (a
    step's deltas for 64 streams are one message): the engine thread never waits on the pipe."""

    def __init__(self, send):
        self._send, self._cv, self._items, self._closed = send, threading.Condition(), [], False
        self._thread = threading.Thread(target=self._run, name="kvinfer-outbox", daemon=True)
        self._thread.start()

    def put(self, d: Delta) -> None:
        if d.cause is not None:
            d.cause = _portable(d.cause)
        with self._cv:
            self._items.append(d)
            if len(self._items) == 1:
                self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._closed:
                    self._cv.wait()
                items, self._items, closed = self._items, [], self._closed
            if items:
                try:
                    self._send(("deltas", items))
                except OSError:  # the server process is gone
                    return
            elif closed:
                return

    def close(self) -> None:
        """Sends what is queued, then stops the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()


def _engine_main(conn, llm_kwargs: dict, engine_kwargs: dict) -> None:
    """The engine process: load the model, then serve the pipe until "close" or the other end goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the server stops us
    sys.setswitchinterval(5e-4)  # a reply waits at most this long for the engine thread to let go of the lock
    send_lock = threading.Lock()

    def send(message) -> None:
        with send_lock:
            conn.send(message)

    try:
        from kvinfer.llm import LLM
        from kvinfer.serving import ServingEngine

        llm = LLM(**llm_kwargs)
        engine = ServingEngine(llm, **engine_kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure to start is the server's startup error
        send(("failed", _portable(e)))
        return
    outbox = _Outbox(send)
    send(("ready", ModelInfo.of(llm)))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the server process is gone
                break
            except Exception:  # noqa: BLE001 - one message that does not unpickle: its caller times out
                continue
            kind = message[0]
            if kind == "close":
                break
            if kind == "abort":
                engine.abort(message[1])
                continue
            call = message[1]
            try:
                if kind == "submit":
                    _, _, request_id, prompt_ids, params = message
                    result = engine.submit(prompt_ids, params, outbox.put, request_id)
                else:
                    result = engine.stats()
            except Exception as e:  # noqa: BLE001 - the caller's error (a bad request, a full queue)
                result = _portable(e)
            send(("reply", call, result))
    finally:
        engine.close()  # what still runs ends with "abort" deltas, sent before "closed"
        outbox.close()
        llm.close()
        try:
            send(("closed",))
        except OSError:
            pass


class EngineProcess:
    """ServingEngine's interface (submit, abort, stats, close) over an engine in a process of its own.
    `llm_kwargs` are LLM's arguments and `engine_kwargs` ServingEngine's; `llm` is a ModelView and
    `info` what the engine process loaded. Deltas reach each request's `deliver` from a thread of
    this process. Loading fails here with the engine process's error."""

    def __init__(self, llm_kwargs: dict, engine_kwargs: dict):
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state or threads forked
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_engine_main, args=(child, llm_kwargs, engine_kwargs),
                                    name="kvinfer-engine", daemon=True)
        self._process.start()
        child.close()  # ours: the pipe reports the end when the engine process ends
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._process.join()
            self._conn.close()
            raise RuntimeError(f"the engine process exited with code {self._process.exitcode} while loading") from None
        if message[0] == "failed":
            self._process.join()
            self._conn.close()
            raise message[1]
        self.info: ModelInfo = message[1]
        try:
            self.llm = ModelView(self.info)
        except BaseException:  # the engine process must not outlive a failed start
            self._conn.send(("close",))
            self._process.join(timeout=120)
            self._conn.close()
            raise
        self._lock, self._send_lock = threading.Lock(), threading.Lock()
        self._deliver: dict[str, Deliver] = {}
        self._submitting: set[str] = set()  # submits not answered yet: their error is submit's to raise
        self._calls: dict[int, tuple[threading.Event, list]] = {}
        self._ids, self._call_ids = itertools.count(), itertools.count()
        self._closed = False
        self._receiver = threading.Thread(target=self._receive, name="kvinfer-engine-pipe", daemon=True)
        self._receiver.start()

    # ---- ServingEngine's interface -------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params, deliver: Deliver, request_id: str | None = None,
               prompt_array=None) -> str:
        """Queues a request; `deliver` is called from this process's pipe thread with each Delta. The
        engine's errors (a bad request, a full queue) raise here. `prompt_array` (ServingEngine's) is
        not sent: the engine process makes its own from the ids."""
        request_id = request_id or f"req-{next(self._ids)}"
        with self._lock:
            if self._closed:
                raise EngineStoppedError("this serving engine was closed")
            self._deliver[request_id] = deliver  # before the request is sent: its deltas may come first
            self._submitting.add(request_id)
        try:
            self._call("submit", request_id, list(prompt_ids), params)
        except BaseException:
            with self._lock:
                self._deliver.pop(request_id, None)
            raise
        finally:
            with self._lock:
                self._submitting.discard(request_id)
        return request_id

    def abort(self, request_id: str) -> None:
        with self._lock:
            if self._closed or request_id not in self._deliver:
                return
        self._send(("abort", request_id))

    def stats(self) -> dict:
        return self._call("stats")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stops the engine process; requests still running end with finish_reason "abort"."""
        with self._lock:
            closing, self._closed = not self._closed, True
        if closing:
            self._send(("close",))
        self._receiver.join(timeout=120)
        self._process.join(timeout=120)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._receiver.join(timeout=10)
        self._conn.close()

    # ---- the pipe ------------------------------------------------------------------------------------
    def _send(self, message) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except OSError:  # the engine process is gone: the pipe thread ends every request
            pass

    CALL_TIMEOUT = 60.0  # seconds an answer may take (the engine process answers between steps)

    def _call(self, kind: str, *args):
        event, box = threading.Event(), []
        with self._lock:
            if self._closed:
                raise EngineStoppedError("this serving engine was closed")
            call = next(self._call_ids)
            self._calls[call] = (event, box)
        self._send((kind, call, *args))
        if not event.wait(self.CALL_TIMEOUT):
            with self._lock:
                self._calls.pop(call, None)
            raise EngineStoppedError(f"the engine process did not answer within {self.CALL_TIMEOUT:.0f} s")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _receive(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "deltas":
                    for d in message[1]:
                        self._emit(d)
                elif message[0] == "reply":
                    with self._lock:
                        waiting = self._calls.pop(message[1], None)  # None: the call timed out
                    if waiting is not None:
                        waiting[1].append(message[2])
                        waiting[0].set()
                else:  # "closed"
                    break
        except BaseException:  # noqa: BLE001 - the pipe ended or a message was unreadable: end all
            pass
        self._process.join(timeout=5)
        self._end_all(self._process.exitcode)

    def _emit(self, d: Delta) -> None:
        with self._lock:
            deliver = self._deliver.pop(d.request_id, None) if d.finish_reason else self._deliver.get(d.request_id)
        if deliver is None:
            return
        try:
            deliver(d)
        except Exception:  # noqa: BLE001 - a receiver that fails loses its request, not the engine
            if d.finish_reason is None:  # (from another thread: this one must never wait on the pipe)
                threading.Thread(target=self.abort, args=(d.request_id,), daemon=True).start()

    def _end_all(self, exitcode: int | None) -> None:
        """The engine process has ended: calls in progress fail and requests still open end with an
        error (after close(), they have all ended already)."""
        with self._lock:
            self._closed = True
            calls, self._calls = self._calls, {}
            open_requests = {r: d for r, d in self._deliver.items() if r not in self._submitting}
            self._deliver = {}
        error = EngineStoppedError(f"the engine process exited (code {exitcode})")
        for event, box in calls.values():
            box.append(error)
            event.set()
        for request_id, deliver in open_requests.items():
            try:
                deliver(Delta(request_id, "", [], "error", error=str(error), cause=error))
            except Exception:  # noqa: BLE001
                pass
