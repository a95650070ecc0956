"""The MMIDIDX reader and builder: round trips, byte-compatibility with megatron-core both ways,
C++ merging, atomic finalisation and clear errors on damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset as CoreDataset
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder as CoreBuilder

from megatron.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    best_fitting_dtype,
)


def random_documents(seed: int, vocab: int, num_docs: int = 40) -> list[list[np.ndarray]]:
    """Documents of 1-3 sequences of 0-50 tokens (empty sequences included)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.integers(0, vocab, rng.integers(0, 50)) for _ in range(rng.integers(1, 4))]
        for _ in range(num_docs)
    ]


def write_ours(prefix: Path, documents, dtype) -> None:
    with IndexedDatasetBuilder(prefix, dtype) as builder:
        for document in documents:
            for sequence in document:
                builder.add_item(sequence)
            builder.end_document()
        builder.finalize()


def write_core(prefix: Path, documents, dtype) -> None:
    builder = CoreBuilder(f"{prefix}.bin", dtype=dtype)
    for document in documents:
        for sequence in document:
            builder.add_item(torch.from_numpy(sequence.astype(np.int64)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")


def same_bytes(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{s}").read_bytes() == Path(f"{b}{s}").read_bytes() for s in (".bin", ".idx"))


@pytest.mark.parametrize("dtype, vocab", [(np.uint16, 5000), (np.int32, 250880)])
def test_round_trip(tmp_path, dtype, vocab):
    documents = random_documents(0, vocab)
    write_ours(tmp_path / "ds", documents, dtype)
    ds = IndexedDataset(tmp_path / "ds")
    sequences = [s for d in documents for s in d]
    assert len(ds) == len(sequences)
    assert ds.dtype == np.dtype(dtype)
    assert ds.doc_idx.tolist() == np.cumsum([0] + [len(d) for d in documents]).tolist()
    for i, sequence in enumerate(sequences):
        np.testing.assert_array_equal(ds[i], sequence)
        assert ds.sizes[i] == len(sequence)
    long = max(range(len(sequences)), key=lambda i: len(sequences[i]))
    np.testing.assert_array_equal(ds.get(long, 3, 5), sequences[long][3:8])
    with pytest.raises(IndexError):
        ds.get(long, len(sequences[long]) - 1, 2)


@pytest.mark.parametrize("dtype, vocab", [(np.uint16, 5000), (np.int32, 250880)])
def test_byte_identical_to_megatron_core_and_readable_both_ways(tmp_path, dtype, vocab):
    documents = random_documents(1, vocab)
    write_ours(tmp_path / "ours", documents, dtype)
    write_core(tmp_path / "core", documents, dtype)
    assert same_bytes(tmp_path / "ours", tmp_path / "core")

    theirs_reading_ours = CoreDataset(str(tmp_path / "ours"))
    ours_reading_theirs = IndexedDataset(tmp_path / "core")
    np.testing.assert_array_equal(theirs_reading_ours.sequence_lengths, ours_reading_theirs.sizes)
    np.testing.assert_array_equal(theirs_reading_ours.document_indices, ours_reading_theirs.doc_idx)
    for i in range(len(ours_reading_theirs)):
        np.testing.assert_array_equal(theirs_reading_ours[i], ours_reading_theirs[i])


def test_add_documents_equals_one_by_one(tmp_path):
    rng = np.random.default_rng(2)
    lengths = rng.integers(0, 30, 100)
    tokens = rng.integers(0, 60000, int(lengths.sum())).astype(np.uint16)
    with IndexedDatasetBuilder(tmp_path / "batched", np.uint16) as builder:
        builder.add_documents(tokens, lengths)
        builder.finalize()
    pieces = np.split(tokens, np.cumsum(lengths)[:-1])
    write_ours(tmp_path / "single", [[p] for p in pieces], np.uint16)
    assert same_bytes(tmp_path / "batched", tmp_path / "single")


def test_add_documents_rejects_lengths_that_do_not_add_up(tmp_path):
    with IndexedDatasetBuilder(tmp_path / "ds", np.uint16) as builder:
        with pytest.raises(ValueError, match="lengths sum to 5"):
            builder.add_documents(np.zeros(4, np.uint16), np.array([2, 3]))


def test_merge_equals_writing_everything_at_once(tmp_path):
    documents = random_documents(3, 250880, num_docs=30)
    write_ours(tmp_path / "part0", documents[:10], np.int32)
    write_ours(tmp_path / "part1", documents[10:], np.int32)
    write_ours(tmp_path / "whole", documents, np.int32)
    with IndexedDatasetBuilder(tmp_path / "merged", np.int32) as builder:
        builder.merge(tmp_path / "part0")
        builder.merge(tmp_path / "part1")
        builder.finalize()
    assert same_bytes(tmp_path / "merged", tmp_path / "whole")


def test_merge_rejects_another_dtype(tmp_path):
    write_ours(tmp_path / "small", random_documents(4, 100, 3), np.uint16)
    with IndexedDatasetBuilder(tmp_path / "big", np.int32) as builder:
        with pytest.raises(RuntimeError, match="small.idx: dtype code 8 differs"):
            builder.merge(tmp_path / "small")


def test_nothing_final_until_finalize_and_nothing_left_after_failure(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with IndexedDatasetBuilder(tmp_path / "ds", np.uint16) as builder:
            builder.add_document(np.arange(10))
            assert not (tmp_path / "ds.bin").exists() and not (tmp_path / "ds.idx").exists()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_best_fitting_dtype():
    assert best_fitting_dtype(50257) == np.uint16
    assert best_fitting_dtype(65499) == np.uint16
    assert best_fitting_dtype(65500) == np.int32
    assert best_fitting_dtype(250880) == np.int32


def corrupt(prefix: Path, offset: int, data: bytes) -> None:
    idx = bytearray(Path(f"{prefix}.idx").read_bytes())
    idx[offset : offset + len(data)] = data
    Path(f"{prefix}.idx").write_bytes(bytes(idx))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: corrupt(p, 0, b"NOTMAGIC!"), "wrong magic"),
        (lambda p: corrupt(p, 9, struct.pack("<Q", 2)), "unsupported version 2"),
        (lambda p: corrupt(p, 17, bytes([9])), "unknown dtype code 9"),
        (lambda p: Path(f"{p}.bin").write_bytes(Path(f"{p}.bin").read_bytes()[:-2]), "bytes, but"),
        (lambda p: Path(f"{p}.idx").write_bytes(Path(f"{p}.idx").read_bytes()[:-8]), "header describes"),
        (lambda p: Path(f"{p}.bin").unlink(), "ds.bin: file not found"),
    ],
    ids=["magic", "version", "dtype", "bin-size", "idx-truncated", "missing-bin"],
)
def test_damaged_files_give_clear_errors(tmp_path, damage, message):
    write_ours(tmp_path / "ds", random_documents(5, 1000, 5), np.uint16)
    damage(tmp_path / "ds")
    with pytest.raises(IndexedDatasetError, match=message) as error:
        IndexedDataset(tmp_path / "ds")
    assert str(tmp_path / "ds") in str(error.value)
