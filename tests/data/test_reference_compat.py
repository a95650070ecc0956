"""Files written by the original Megatron-DeepSpeed preprocessing tool read back exactly as
megatron-core reads them, and our builder rewrites them byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset as CoreDataset

from megatron.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

PREFIXES = [
    "ag_news_prompt_inputs_document",
    "ag_news_prompt_targets_document",
    "meg-gpt2-openwebtext_text_document",
]


@pytest.mark.parametrize("name", PREFIXES)
def test_reads_like_megatron_core(reference_dir, name):
    ours = IndexedDataset(reference_dir / name)
    theirs = CoreDataset(str(reference_dir / name))
    assert len(ours) == len(theirs)
    np.testing.assert_array_equal(ours.sizes, theirs.sequence_lengths)
    np.testing.assert_array_equal(ours.doc_idx, theirs.document_indices)
    for i in range(len(ours)):
        np.testing.assert_array_equal(ours[i], theirs[i])


@pytest.mark.parametrize("name", PREFIXES)
def test_rewrite_is_byte_identical(reference_dir, tmp_path, name):
    source = IndexedDataset(reference_dir / name)
    with IndexedDatasetBuilder(tmp_path / name, source.dtype) as builder:
        for first, last in zip(source.doc_idx[:-1], source.doc_idx[1:]):
            for i in range(first, last):
                builder.add_item(source[i])
            builder.end_document()
        builder.finalize()
    for suffix in (".bin", ".idx"):
        assert Path(f"{tmp_path / name}{suffix}").read_bytes() == (
            reference_dir / f"{name}{suffix}"
        ).read_bytes()


def test_known_facts_of_the_reference_files(reference_dir):
    targets = IndexedDataset(reference_dir / "ag_news_prompt_targets_document")
    inputs = IndexedDataset(reference_dir / "ag_news_prompt_inputs_document")
    assert targets.dtype == np.int32 and len(targets) == len(inputs) == 100
    assert targets[0].tolist() == [126148, 2]
    assert all(targets[i][-1] == 2 for i in range(len(targets)))
    assert IndexedDataset(reference_dir / "meg-gpt2-openwebtext_text_document").dtype == np.uint16
