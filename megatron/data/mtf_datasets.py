"""Builds the packed, blended datasets of a data group: one packed dataset per (prefix, range),
each sized by the blend, mixed at row level by weight."""

from __future__ import annotations

import os

from megatron.data.blending import BlendedDataset, blending_indices, samples_per_dataset
from megatron.data.data_config import DataGroup
from megatron.data.packing import PackedDataset, PackingConfig, build_packing_index
from megatron.data.pairs import PairDataset


def pair_range(prefix: str, begin: float, end: float) -> PairDataset:
    total = len(PairDataset(prefix))
    return PairDataset(prefix, int(round(begin * total)), int(round(end * total)))


def build_group(
    group: DataGroup, packing: PackingConfig, num_samples: int, pad_id: int, cache_path: str | None = None
) -> BlendedDataset:
    """`num_samples` packed rows of `group`, its datasets mixed by weight. Index caches go to
    `cache_path`, or beside each dataset's files."""
    ranges = [d for d in group.datasets if d.end > d.begin and d.weight > 0]
    if not ranges:
        raise ValueError(f"data group {group.name!r} has no dataset with a non-empty range and weight")
    pairs = [pair_range(d.prefix, d.begin, d.end) for d in ranges]
    for p in pairs:
        if len(p) == 0:
            raise ValueError(f"data group {group.name!r}: {p.prefix} has no pairs in its range")

    def cache_for(prefix: str) -> str:
        return cache_path or os.path.dirname(os.path.abspath(prefix))

    description = {"group": group.name, "datasets": [p.signature() for p in pairs], "packing": repr(packing)}
    dataset_index, sample_index = blending_indices(
        [d.weight for d in ranges], num_samples, cache_for(ranges[0].prefix), description
    )
    needed = samples_per_dataset(dataset_index, len(pairs))
    packed = [
        PackedDataset(p, build_packing_index(p, packing, max(1, int(n)), cache_for(p.prefix)), packing, pad_id)
        for p, n in zip(pairs, needed)
    ]
    return BlendedDataset(packed, dataset_index, sample_index)
