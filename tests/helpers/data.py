"""Pairs datasets written from chosen lengths, with random tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron.data.indexed_dataset import IndexedDatasetBuilder
from megatron.data.pairs import PairDataset


def write_pairs(prefix: Path, input_lengths, target_lengths, vocab: int = 1000, seed: int = 0) -> PairDataset:
    rng = np.random.default_rng(seed)
    for key, lengths in (("inputs", input_lengths), ("targets", target_lengths)):
        with IndexedDatasetBuilder(f"{prefix}_{key}_document", np.uint16) as builder:
            for n in lengths:
                builder.add_document(rng.integers(4, vocab, n))
            builder.finalize()
    return PairDataset(prefix)
