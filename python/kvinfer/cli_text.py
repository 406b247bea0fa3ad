"""`kvinfer generate` and `kvinfer chat`: every option is checked before the model loads; text
streams to stdout, a one-line summary (tokens, rates, time to first token) to stderr, errors are
one line with exit status 2. The sampling defaults are a reading CLI's (temperature 0.7, as
llama.cpp's 0.8 and ollama's), where SamplingParams keeps the model's own distribution (1.0)."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys

CLI_TEMPERATURE = 0.7


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help line; None and off switches say nothing (their help says
    what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or quiet or not action.option_strings:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {default})" if text else f"(default: {default})"


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout",
                       formatter_class=HelpFormatter)
    p.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' (or none) reads it from stdin")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, token ids, finish reason, timings")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    _add_model_args(p, max_tokens=128)
    p.set_defaults(func=generate)

    p = sub.add_parser("chat", help="interactive chat with history (Ctrl-C stops a reply, Ctrl-D exits)",
                       formatter_class=HelpFormatter)
    p.add_argument("--system", default=None, help="system message")
    _add_model_args(p, max_tokens=256)
    p.set_defaults(func=chat)


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _add_model_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--model", default=None, help="HF model folder or .gguf (default: SmolLM2-135M-Instruct, embedded)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    p.add_argument("--max-context", type=positive, default=None, help="tokens per sequence (default: the model's, at most 2048)")
    p.add_argument("--max-memory", default=None, help="memory budget with a unit, e.g. 4GiB: sizes the context to fit, or fails before loading (default: no budget)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="launch every step's kernels one by one instead of replaying CUDA graphs (debugging)")
    p.add_argument("--max-tokens", type=positive, default=max_tokens, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=CLI_TEMPERATURE,
                   help="0 is greedy; the Python API's SamplingParams keeps the model's distribution (1.0)")
    p.add_argument("--top-k", type=int, default=0, help="0 disables it")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 disables it")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below this fraction of the top one; 0 disables it")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 disables it")
    p.add_argument("--seed", type=int, default=None, help="a fixed seed gives the same text every run (default: random)")
    p.add_argument("--stop", action="append", default=[], help="stop at this text (repeatable; default: none)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")


def _checked(args: argparse.Namespace):
    """The SamplingParams of the options, after checking every option a load would check later."""
    from kvinfer.planner import parse_bytes
    from kvinfer.sampling import SamplingParams

    if args.max_memory is not None:
        parse_bytes(args.max_memory)
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", args.device):
        raise ValueError(f"--device {args.device!r} is not auto, cpu or cuda:N")
    if getattr(args, "system", None) is not None and getattr(args, "chat", True) is False:
        raise ValueError("--system needs --chat")
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)


def _load(args: argparse.Namespace):
    from kvinfer.llm import LLM

    # Progress bars redraw a line: only for a person watching, not for a log or a pipe.
    llm = LLM(args.model, device=args.device, max_context=args.max_context, max_batch=1,
              progress=not getattr(args, "quiet", False) and sys.stderr.isatty(),
              max_memory=args.max_memory, cuda_graphs=not args.no_cuda_graphs)
    if not getattr(args, "quiet", False) and llm.graphs_summary():
        print(f"kvinfer: {llm.graphs_summary()}", file=sys.stderr)
    return llm


def summary(stream) -> str:
    """One line like llama.cpp's: prompt and generated tokens with their rates, time to first token."""
    t = stream.timings
    rate = lambda n, s: f"{n / s:.1f} tok/s" if s > 0 else "- tok/s"  # noqa: E731
    return (f"prompt {t.prompt_tokens} tokens, {rate(t.prompt_tokens, t.prompt_seconds)} | generated "
            f"{t.generated_tokens} tokens, {rate(max(t.generated_tokens - 1, 0), t.decode_seconds)} | "
            f"first token {1000 * t.prompt_seconds:.0f} ms | {stream.output.finish_reason}")


def generate(args: argparse.Namespace) -> int:
    params = _checked(args)  # before the model loads, so a mistake costs no load
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not text:
        raise ValueError("the prompt is empty")
    llm = _load(args)
    prompt: str | list[int] = text
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + \
            [{"role": "user", "content": text}]
        prompt = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(messages), add_special_tokens=False)
    stream = llm.stream(prompt, params)  # the prompt is checked here, before anything is printed
    if args.echo and not args.json:
        sys.stdout.write(text)
    for piece in stream:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    out = stream.output
    if args.json:
        t = stream.timings
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "prompt_token_ids": out.prompt_token_ids,
                          "finish_reason": out.finish_reason,
                          "timings": {"prompt_tokens": t.prompt_tokens, "prompt_seconds": t.prompt_seconds,
                                      "generated_tokens": t.generated_tokens, "decode_seconds": t.decode_seconds}},
                         ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    if not args.quiet:
        print(summary(stream), file=sys.stderr)
    return 0


def chat(args: argparse.Namespace) -> int:
    params = _checked(args)
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    session = ChatSession(_load(args), params, args.system)
    print("kvinfer chat: Ctrl-C stops a reply; /history shows the conversation, /reset clears it; "
          "/exit or Ctrl-D quits", file=sys.stderr)
    try:
        session.run()
    except KeyboardInterrupt:  # a Ctrl-C between prompts (the first one at the prompt only warns)
        print(file=sys.stderr)
    return 0


class ChatSession:
    """The conversation: a prompt loop where Ctrl-C at the prompt warns (twice quits) and a reply
    runs with Ctrl-C as a flag that stops it; errors of one message leave the history as it was."""

    def __init__(self, llm, params, system: str | None):
        self.llm, self.params = llm, params
        self.system = [{"role": "system", "content": system}] if system is not None else []
        self.history: list[dict[str, str]] = []

    def run(self) -> None:
        interrupted = False
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print(file=sys.stderr)
                return
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                print("\n(Ctrl-C again or Ctrl-D to quit)", file=sys.stderr)
                continue
            interrupted = False
            if line == "/exit":
                return
            if line == "/reset":
                self.history = []
            elif line == "/history":
                for turn in self.system + self.history:
                    print(f"[{turn['role']}] {turn['content']}")
            elif line:
                with _CtrlC() as ctrl_c:  # a flag, not KeyboardInterrupt: the engine is never cut mid-step
                    self.reply(line, ctrl_c)

    def reply(self, line: str, ctrl_c: _CtrlC) -> None:
        turns = self.history + [{"role": "user", "content": line}]
        try:
            ids = _fit(self.llm, self.system, turns, self.params)  # drops the oldest turns that no longer fit
        except ValueError as e:  # no chat template, a message longer than the context: the session goes on
            print(f"kvinfer: error: {e}", file=sys.stderr)
            return
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        stream = self.llm.stream(ids, self.params)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
            if ctrl_c.pressed:
                stream.close()
                sys.stdout.write(" [stopped]")
                break
        sys.stdout.write("\n")
        self.history = turns + [{"role": "assistant", "content": stream.output.text}]


class _CtrlC:
    """While a reply is made, Ctrl-C (SIGINT) sets `pressed` instead of raising."""

    def __enter__(self) -> _CtrlC:
        self.pressed = False
        self._previous = signal.signal(signal.SIGINT, self._press)
        return self

    def _press(self, signum, frame) -> None:
        self.pressed = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _fit(llm, system: list[dict], history: list[dict], params) -> list[int]:
    """The prompt ids of the conversation, dropping its oldest turns (never the system message or the
    last message) until the reply's max_tokens fit."""
    keep = llm.max_context - params.max_tokens
    while True:
        ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(system + history), add_special_tokens=False)
        if len(ids) <= keep:
            return ids
        if len(history) <= 1:
            raise ValueError(f"this message and the reply ({len(ids)} + {params.max_tokens} tokens) do not fit "
                             f"max_context={llm.max_context}")
        del history[0]
