"""jsonl -> tokenized Megatron indexed datasets, one per json key (`{prefix}_{key}_document`).

The main process streams line batches to a pool of workers that validate, tokenize (HF fast
tokenizer, batched) and pack each batch into flat token arrays; results come back in input order,
with a bounded number in flight, and the C++ writer appends them. Output is therefore identical
for any worker count, memory stays flat, and a row is kept or dropped for all keys at once.
Everything is written under temporary names and renamed only when the whole run succeeded.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from megatron.data.indexed_dataset import IndexedDatasetBuilder, best_fitting_dtype
from megatron.data.jsonl_input import LineBatch, expand_inputs, read_line_batches
from megatron.data.tokenizer import HFTokenizer

BATCH_LINES = 1024


@dataclass(frozen=True)
class KeySpec:
    """One json key to tokenize, and how: a leading space (in the text), a beginning-of-sequence
    token first and/or an end-of-document token last (among the token ids)."""

    name: str
    prepend_space: bool = False
    append_eod: bool = False
    prepend_bos: bool = False


@dataclass
class PreprocessConfig:
    inputs: list[str]
    keys: list[KeySpec]
    tokenizer: str
    output_prefix: str
    workers: int = 1
    skip_bad_rows: bool = False
    log_interval: int = 10000
    batch_lines: int = BATCH_LINES


def output_prefix(prefix: str, key: str) -> str:
    return f"{prefix}_{key}_document"


class BadRowError(ValueError):
    """A row that cannot be used, named by file and line."""


@dataclass
class EncodedBatch:
    path: str
    num_bytes: int
    tokens: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    bad_rows: list[tuple[int, str, str]]  # (line number, reason, detail)
    blank_lines: int


class BatchEncoder:
    """Validates and tokenizes line batches (one instance per worker process)."""

    def __init__(self, tokenizer_path: str, keys: list[KeySpec], dtype: np.dtype):
        self.tokenizer = HFTokenizer(tokenizer_path)
        self.keys = keys
        self.dtype = np.dtype(dtype)

    def parse(self, line: bytes) -> list[str] | tuple[str, str]:
        """The row's text per key, or (reason, detail) when the row is bad."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return "invalid UTF-8", f"undecodable byte at offset {error.start}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            return "malformed JSON", f"{error.msg} at column {error.colno}"
        if not isinstance(row, dict):
            return "malformed JSON", f"a JSON {type(row).__name__}, not an object"
        values = []
        for key in self.keys:
            if key.name not in row:
                return "missing key", f"no key {key.name!r}"
            value = row[key.name]
            if not isinstance(value, str):
                return "non-string value", f"{key.name!r} holds a {type(value).__name__}"
            if not value.strip():
                return "empty field", f"{key.name!r} is empty"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "invalid UTF-8", f"{key.name!r} holds an unpaired surrogate escape"
            values.append(" " + value if key.prepend_space else value)
        return values

    def __call__(self, batch: LineBatch) -> EncodedBatch:
        bad_rows: list[tuple[int, str, str]] = []
        blank_lines = 0
        line_numbers: list[int] = []
        columns: list[list[str]] = [[] for _ in self.keys]
        for number, line in enumerate(batch.lines, start=batch.first_line):
            if not line.strip():
                blank_lines += 1
                continue
            parsed = self.parse(line)
            if isinstance(parsed, tuple):
                bad_rows.append((number, *parsed))
                continue
            line_numbers.append(number)
            for column, value in zip(columns, parsed):
                column.append(value)

        ids_per_key = [self.tokenizer.encode_batch(column) for column in columns]
        keep = [True] * len(line_numbers)
        for key, ids in zip(self.keys, ids_per_key):
            for row, row_ids in enumerate(ids):
                if keep[row] and not row_ids:
                    keep[row] = False
                    bad_rows.append(
                        (line_numbers[row], "empty after tokenization", f"{key.name!r} has no tokens")
                    )
        bad_rows.sort()

        tokens, lengths = {}, {}
        for key, ids in zip(self.keys, ids_per_key):
            first = [self.tokenizer.bos] if key.prepend_bos else []
            last = [self.tokenizer.eod] if key.append_eod else []
            kept = [first + row_ids + last for row_ids, k in zip(ids, keep) if k]
            lengths[key.name] = np.fromiter(map(len, kept), np.int64, count=len(kept))
            tokens[key.name] = np.fromiter(
                itertools.chain.from_iterable(kept), self.dtype, count=int(lengths[key.name].sum())
            )
        return EncodedBatch(batch.path, batch.num_bytes, tokens, lengths, bad_rows, blank_lines)


_worker_encoder: BatchEncoder | None = None


def _init_worker(tokenizer_path: str, keys: list[KeySpec], dtype: np.dtype) -> None:
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core, no nested threads
    _worker_encoder = BatchEncoder(tokenizer_path, keys, dtype)


def _encode_in_worker(batch: LineBatch) -> EncodedBatch:
    return _worker_encoder(batch)


def ordered_bounded_map(pool, function: Callable, items: Iterable, depth: int) -> Iterator:
    """`pool.imap(function, items)` with at most `depth` items in flight, so a fast producer
    never piles batches up in memory."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(function, (item,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


@dataclass
class PreprocessSummary:
    documents: int = 0
    tokens: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    blank_lines: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    write_seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def rates(self, seconds: float) -> str:
        seconds = max(seconds, 1e-9)
        return (
            f"{self.documents / seconds:,.0f} docs/s, "
            f"{sum(self.tokens.values()) / seconds:,.0f} tokens/s, "
            f"{self.input_bytes / seconds / 1e6:,.2f} MB/s"
        )

    def format(self) -> str:
        lines = [
            f"documents: {self.documents:,}",
            *(f"tokens[{key}]: {count:,}" for key, count in self.tokens.items()),
            f"skipped rows: {sum(self.skipped.values()):,}"
            + "".join(f"\n  {reason}: {count:,}" for reason, count in sorted(self.skipped.items())),
            f"blank lines ignored: {self.blank_lines:,}",
            f"time: {self.seconds:.2f} s ({self.rates(self.seconds)}); "
            f"writer {self.write_seconds:.2f} s",
            *(f"wrote {path}.bin/.idx" for path in self.outputs),
        ]
        return "\n".join(lines)


class ProgressReporter:
    """A one-line progress report on stderr every `interval` documents."""

    def __init__(self, summary: PreprocessSummary, interval: int, stream=sys.stderr):
        self.summary, self.interval, self.stream = summary, interval, stream
        self.start = time.perf_counter()
        self.next_report = interval
        self.end = "\r" if stream.isatty() else "\n"

    def update(self) -> None:
        if self.interval <= 0 or self.summary.documents < self.next_report:
            return
        self.next_report = (self.summary.documents // self.interval + 1) * self.interval
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"processed {self.summary.documents:,} documents "
            f"({self.summary.rates(elapsed)}){self.end}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.end == "\r" and self.summary.documents >= self.interval > 0:
            self.stream.write("\n")


def preprocess(config: PreprocessConfig, log=sys.stderr) -> PreprocessSummary:
    """Run the whole conversion; raises BadRowError (naming file and line) on the first bad
    row unless `skip_bad_rows`, leaving no output behind, and ValueError (naming the tokenizer
    file) before writing anything when a key asks for a BOS the tokenizer lacks."""
    start = time.perf_counter()
    files = expand_inputs(config.inputs)
    tokenizer = HFTokenizer(config.tokenizer)
    bos_keys = [key.name for key in config.keys if key.prepend_bos]
    if bos_keys:
        tokenizer.require_bos(f"--prepend-bos {' '.join(bos_keys)}")
    dtype = np.dtype(best_fitting_dtype(tokenizer.vocab_size))
    summary = PreprocessSummary()
    progress = ProgressReporter(summary, config.log_interval, log)
    with ExitStack() as stack:
        builders = {
            key.name: stack.enter_context(
                IndexedDatasetBuilder(output_prefix(config.output_prefix, key.name), dtype)
            )
            for key in config.keys
        }
        pool = stack.enter_context(
            multiprocessing.get_context("fork").Pool(
                config.workers, _init_worker, (config.tokenizer, config.keys, dtype)
            )
        )
        batches = read_line_batches(files, config.batch_lines)
        for encoded in ordered_bounded_map(pool, _encode_in_worker, batches, 2 * config.workers + 2):
            if encoded.bad_rows and not config.skip_bad_rows:
                line, reason, detail = encoded.bad_rows[0]
                raise BadRowError(
                    f"{encoded.path}:{line}: {reason}: {detail} "
                    "(--skip-bad-rows skips such rows and counts them)"
                )
            summary.skipped.update(reason for _, reason, _ in encoded.bad_rows)
            summary.blank_lines += encoded.blank_lines
            summary.input_bytes += encoded.num_bytes
            write_start = time.perf_counter()
            for name, builder in builders.items():
                builder.add_documents(encoded.tokens[name], encoded.lengths[name])
                summary.tokens[name] += len(encoded.tokens[name])
            summary.write_seconds += time.perf_counter() - write_start
            summary.documents += len(next(iter(encoded.lengths.values())))
            progress.update()
        progress.close()
        for name, builder in builders.items():
            builder.finalize()
            summary.outputs.append(builder.prefix)
    summary.seconds = time.perf_counter() - start
    return summary
