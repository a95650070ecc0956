"""The data-mixture files of a multilingual run, made from the preprocessed datasets themselves
rather than typed by hand: one training group with an entry per dataset (language), weighted by
its preprocessed bytes (inputs + targets `.bin`), on the first `1 - valid_fraction` of its pairs;
and one validation group per dataset on the rest. Both in the quoted-group format of
`--train-weighted-split-paths-path` / `--valid-weighted-split-paths-path`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from megatron.data.indexed_dataset import data_file_path
from megatron.data.mtf_datasets import pair_range
from megatron.data.pairs import PairDataset, pair_prefixes


@dataclass(frozen=True)
class MixtureEntry:
    prefix: str
    bytes: int
    pairs: int

    @property
    def name(self) -> str:
        return os.path.basename(self.prefix)


def measure(prefix: str) -> MixtureEntry:
    """A dataset's size, its files opened and checked (a missing or damaged file stops here)."""
    if re.search(r"[\s,\"']", prefix):
        raise ValueError(f"{prefix}: the mixture format cannot hold spaces, commas or quotes in a path")
    pairs = len(PairDataset(prefix))
    size = sum(os.path.getsize(data_file_path(p)) for p in pair_prefixes(prefix))
    return MixtureEntry(os.path.abspath(prefix), size, pairs)


def train_group(entries: list[MixtureEntry], valid_fraction: float) -> str:
    total = sum(e.bytes for e in entries)
    end = f"{1 - valid_fraction:.6g}"
    return "train: " + ", ".join(f"{e.bytes / total:.6g} 0:{end} {e.prefix}" for e in entries)


def valid_groups(entries: list[MixtureEntry], valid_fraction: float) -> tuple[list[str], list[str]]:
    """One group per dataset whose held-out range has pairs; and the names of those left out."""
    begin = f"{1 - valid_fraction:.6g}"
    groups, left_out = [], []
    for e in entries:
        if len(pair_range(e.prefix, float(begin), 1.0)):
            groups.append(f"valid_{e.name}: 1 {begin}:1 {e.prefix}")
        else:
            left_out.append(e.name)
    return groups, left_out
