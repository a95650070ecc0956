"""Megatron's `MMIDIDX` indexed dataset (version 1): a memory-mapped reader and an atomic builder.

`.idx` layout: 9-byte magic `MMIDIDX\\x00\\x00`, `<Q` version 1, `<B` dtype code, `<Q` number of
sequences, `<Q` number of document indices, then int32 sizes, int64 byte pointers into `.bin` and
int64 document indices. `.bin` holds the tokens, concatenated, with no header. Files written here
are byte-identical to those of Megatron-LM / megatron-core for the same sequences.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from megatron.data import _cpp

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")

DTYPE_OF_CODE = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_OF_CODE.items()}


class IndexedDatasetError(ValueError):
    """An `.idx`/`.bin` pair that is missing, malformed or inconsistent."""


def best_fitting_dtype(vocab_size: int) -> type[np.number]:
    """The token dtype Megatron picks: uint16 below 65,500 tokens, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def data_file_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


def index_file_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


class IndexedDataset:
    """Read-only, memory-mapped view of the dataset at `prefix` (`prefix.idx` + `prefix.bin`)."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"{path}: file not found")
        self._index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        if len(self._index) < HEADER.size:
            raise IndexedDatasetError(f"{idx_path}: too short for an MMIDIDX header")
        magic, version, code, num_sequences, num_doc_idx = HEADER.unpack_from(self._index)
        if magic != MAGIC:
            raise IndexedDatasetError(f"{idx_path}: not an MMIDIDX index (wrong magic {magic!r})")
        if version != VERSION:
            raise IndexedDatasetError(f"{idx_path}: unsupported version {version} (expected 1)")
        if code not in DTYPE_OF_CODE:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code} (known: 1..8)")
        self.dtype = np.dtype(DTYPE_OF_CODE[code])

        expected_idx_bytes = HEADER.size + 12 * num_sequences + 8 * num_doc_idx
        if len(self._index) != expected_idx_bytes:
            raise IndexedDatasetError(
                f"{idx_path}: {len(self._index)} bytes, but its header describes "
                f"{num_sequences} sequences and {num_doc_idx} document indices "
                f"({expected_idx_bytes} bytes)"
            )
        offset = HEADER.size
        self.sizes = np.frombuffer(self._index, np.int32, num_sequences, offset)
        offset += self.sizes.nbytes
        self.pointers = np.frombuffer(self._index, np.int64, num_sequences, offset)
        offset += self.pointers.nbytes
        self.doc_idx = np.frombuffer(self._index, np.int64, num_doc_idx, offset)

        bin_bytes = os.path.getsize(bin_path)
        expected_bin_bytes = (
            int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize
            if num_sequences
            else 0
        )
        if bin_bytes != expected_bin_bytes:
            raise IndexedDatasetError(
                f"{bin_path}: {bin_bytes} bytes, but {idx_path} describes {expected_bin_bytes}"
            )
        self._data = (
            np.memmap(bin_path, dtype=self.dtype, mode="r") if bin_bytes else np.empty(0, self.dtype)
        )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens of sequence `i` from `offset`, `length` of them (all the rest if None)."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens [{offset}, {offset + length}) outside sequence {i} of {size}")
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._data[start : start + length]

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))


class IndexedDatasetBuilder:
    """Writes a dataset at `prefix` under temporary names; `finalize()` renames both files into
    place, so an interrupted build never leaves a `.bin`/`.idx` pair that looks complete.

    Use as a context manager: leaving the block by an exception deletes the temporary files.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type[np.number] | np.dtype = np.int32):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"{self.dtype} is not an MMIDIDX token dtype")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}"
        self._tmp_bin = data_file_path(self.prefix) + tag
        self._tmp_idx = index_file_path(self.prefix) + tag
        self._writer = _cpp.IndexedWriter(self._tmp_bin, CODE_OF_DTYPE[self.dtype])

    def __enter__(self) -> IndexedDatasetBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _tokens(self, tokens) -> np.ndarray:
        array = np.ascontiguousarray(tokens)
        if array.dtype != self.dtype:
            array = array.astype(self.dtype)
        return array.reshape(-1)

    def add_item(self, tokens) -> None:
        """Append one sequence; `end_document()` closes the document it belongs to."""
        self._writer.add_sequence(self._tokens(tokens))

    def end_document(self) -> None:
        self._writer.end_document()

    def add_document(self, tokens) -> None:
        """Append one document made of one sequence."""
        self._writer.add_sequence(self._tokens(tokens))
        self._writer.end_document()

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append `len(lengths)` one-sequence documents laid out back to back in `tokens`."""
        self._writer.add_documents(self._tokens(tokens), np.asarray(lengths, dtype=np.int64))

    def merge(self, prefix: str | os.PathLike) -> None:
        """Append the whole dataset at `prefix`, copied in C++ (its dtype must equal ours): what
        megatron-core's builder calls `add_index`, for merging preprocessed shards."""
        for path in (index_file_path(prefix), data_file_path(prefix)):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"{path}: file not found")
        self._writer.merge(str(prefix))

    @property
    def num_documents(self) -> int:
        return self._writer.num_documents

    @property
    def num_tokens(self) -> int:
        return self._writer.num_tokens

    def finalize(self) -> None:
        """Write the index and move both files into place (`.bin` first, `.idx` last)."""
        self._writer.finalize(self._tmp_idx)
        final_idx = index_file_path(self.prefix)
        if os.path.exists(final_idx):
            os.remove(final_idx)  # an old index must never describe the new .bin
        os.replace(self._tmp_bin, data_file_path(self.prefix))
        os.replace(self._tmp_idx, final_idx)

    def abort(self) -> None:
        """Drop everything written so far."""
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)
