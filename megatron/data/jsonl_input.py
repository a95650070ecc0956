"""Streams the lines of jsonl inputs (`.jsonl`, `.jsonl.gz`, folders and globs of them) in fixed
batches, remembering each line's file and number, without ever loading a whole file."""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


@dataclass
class LineBatch:
    """Consecutive raw lines of one file; `first_line` is the 1-based number of `lines[0]`."""

    path: str
    first_line: int
    lines: list[bytes]

    @property
    def num_bytes(self) -> int:
        return sum(len(line) for line in self.lines)


def expand_inputs(specs: list[str]) -> list[str]:
    """Files named by `specs` (files, folders searched recursively, globs), in a stable order."""
    files: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(
                str(p) for p in Path(spec).rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
            )
        elif os.path.isfile(spec):
            found = [spec]
        else:
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(f"--input {spec}: no such file, and no jsonl file matches it")
        files.extend(found)
    return files


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_line_batches(files: list[str], batch_lines: int) -> Iterator[LineBatch]:
    for path in files:
        with _open(path) as stream:
            batch = LineBatch(path, 1, [])
            for number, line in enumerate(stream, start=1):
                if not batch.lines:
                    batch.first_line = number
                batch.lines.append(line)
                if len(batch.lines) == batch_lines:
                    yield batch
                    batch = LineBatch(path, 0, [])
            if batch.lines:
                yield batch
