"""The native step's inputs for one scheduled step: token ids, where each sequence's tokens start,
what is cached, slots, block tables, the sampled rows and their sampling arguments. A decoding
sequence whose latest token is still being sampled by the step in flight names that step's row
(prev_sample_row): the token is taken on the device and never waits for the host."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvinfer import _core

SAMPLING_DTYPE = _core.sampling_args_dtype()
LOGIT_BIAS_DTYPE = _core.logit_bias_dtype()


def logit_biases(args: np.ndarray, entries: list[list[tuple[int, float]]]) -> np.ndarray | None:
    """Packs each sampled row's (token, bias) entries into one array, pointing args' rows at theirs
    (bias_start, bias_count); None when no row has any."""
    counts = [len(e) for e in entries]
    if not any(counts):
        return None
    starts = np.cumsum([0] + counts)
    args["bias_start"], args["bias_count"] = starts[:-1], counts
    out = np.zeros(starts[-1], LOGIT_BIAS_DTYPE)
    out["token"] = [t for e in entries for t, _ in e]
    out["bias"] = [b for e in entries for _, b in e]
    return out


_CONSTANT_ARGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty")


def write_sampling_row(rows: np.ndarray, slot: int, request) -> None:
    """rows[slot] = a request's (scheduler.Request) sampling arguments but the sampler step index
    and logit biases, which each step sets."""
    rows[slot] = np.zeros((), rows.dtype)
    for name in _CONSTANT_ARGS:
        rows[name][slot] = getattr(request.params, name)
    rows["seed"][slot], rows["output_start"][slot] = request.seed, len(request.prompt_ids)


def sampling_args(seqs, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """[R] sampling arguments of the sequences (scheduler.Running) whose rows a step samples: their
    slots' rows of `rows` (write_sampling_row) with `launched`, each one's sampler step index, and
    the step's logit biases (None: no row has any)."""
    args = rows[[s.slot for s in seqs]]
    args["step"] = [s.launched for s in seqs]
    entries = [s.request.params.biases(s.request.stop_ids, s.launched)
               if s.request.params.logit_bias or s.request.params.min_tokens else [] for s in seqs]
    return args, logit_biases(args, entries)


@dataclass
class StepInputs:
    tokens: np.ndarray                   # [T] int32; 0 where prev_sample_row names the token
    query_starts: np.ndarray             # [B + 1] sequence b owns tokens [q[b], q[b + 1])
    cached_lengths: np.ndarray           # [B]
    kv_slots: np.ndarray                 # [B]
    block_tables: np.ndarray             # [B][width]
    logit_rows: np.ndarray               # [R] the last token of each sampled chunk
    sampling: np.ndarray                 # [R] SAMPLING_DTYPE
    logit_bias: np.ndarray | None
    prev_sample_row: np.ndarray | None   # [T]: >= 0 the previous step's sampled row; None: all known
    seqs: list                           # [B] scheduler.Running
    sampled: list                        # [R] the sequence of each sampled row

    def kwargs(self) -> dict:
        return dict(tokens=self.tokens, query_starts=self.query_starts, cached_lengths=self.cached_lengths,
                    kv_slots=self.kv_slots, logit_rows=self.logit_rows, sampling=self.sampling,
                    prev_sample_row=self.prev_sample_row, block_tables=self.block_tables,
                    logit_bias=self.logit_bias)


def step_inputs(chunks, prev_sampled: list | None, engine) -> StepInputs:
    """The inputs of a step of `chunks` (scheduler.Chunk, sequences' cached lengths as launched),
    after a step in flight that samples `prev_sampled` (None: nothing in flight). `engine`
    (engine.Engine) holds each slot's block table and sampling arguments."""
    prev_row = {id(s): r for r, s in enumerate(prev_sampled)} if prev_sampled else {}
    # pieces: prompt chunks (int32 arrays) and runs of decode tokens (lists), in chunk order
    pieces, lengths, from_prev, row = [], [], [], 0  # from_prev: (row, the row of the step in flight it takes its token from)
    for c in chunks:
        if c.tokens is not None:
            pieces.append(c.tokens)
            lengths.append(len(c.tokens))
            row += len(c.tokens)
            continue
        if not pieces or not isinstance(pieces[-1], list):
            pieces.append([])
        if len(c.seq.token_ids) < c.seq.launched:  # its latest token is the step in flight's sample
            pieces[-1].append(0)
            from_prev.append((row, prev_row[id(c.seq)]))
        else:
            pieces[-1].append(c.seq.token_ids[-1])
        lengths.append(1)
        row += 1
    starts = np.cumsum([0] + lengths).astype(np.int32)
    sampled_chunks = [i for i, c in enumerate(chunks) if c.samples]
    sampled = [chunks[i].seq for i in sampled_chunks]
    args, biases = sampling_args(sampled, engine.sampling_rows)
    flat_prev = None
    if from_prev:
        flat_prev = np.full(row, -1, np.int32)
        rows, prev_rows = zip(*from_prev)
        flat_prev[list(rows)] = prev_rows
    seqs = [c.seq for c in chunks]
    return StepInputs(
        tokens=pieces[0] if len(pieces) == 1 and not isinstance(pieces[0], list) else
        np.concatenate([np.array(p, np.int32) for p in pieces]) if pieces else np.zeros(0, np.int32),
        query_starts=starts,
        cached_lengths=np.array([s.cached for s in seqs], np.int32),
        kv_slots=np.array([s.slot for s in seqs], np.int32),
        block_tables=engine.tables(seqs),
        logit_rows=(starts[1:] - 1)[sampled_chunks].astype(np.int32),
        sampling=args, logit_bias=biases,
        prev_sample_row=flat_prev,
        seqs=seqs, sampled=sampled)
