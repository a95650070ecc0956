"""The data-mixture files of a multilingual run, made from the preprocessed datasets themselves
rather than typed by hand: one training group with an entry per dataset (language), weighted by
its preprocessed bytes (inputs + targets `.bin`) raised to 1/T (`temperature` T: 1 is xP3's
by-size mixture; mT5 sampled languages with alpha = 1/T = 0.3), on the first `1 - valid_fraction`
of its pairs; and one validation group per dataset on the rest. Both in the quoted-group format of
`--train-weighted-split-paths-path` / `--valid-weighted-split-paths-path`. And, for a run's token
budget, what each dataset gets of it: its tokens and how many epochs of its training pairs."""

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
    tokens: int  # inputs + targets

    @property
    def name(self) -> str:
        return os.path.basename(self.prefix)


def measure(prefix: str) -> MixtureEntry:
    """A dataset's size, its files opened and checked (a missing or damaged file stops here)."""
    if re.search(r"[\s,\"']", prefix):
        raise ValueError(f"{prefix}: the mixture format cannot hold spaces, commas or quotes in a path")
    dataset = PairDataset(prefix)
    size = sum(os.path.getsize(data_file_path(p)) for p in pair_prefixes(prefix))
    tokens = int(dataset.input_sizes.sum()) + int(dataset.target_sizes.sum())
    return MixtureEntry(os.path.abspath(prefix), size, len(dataset), tokens)


def weights(entries: list[MixtureEntry], temperature: float = 1.0) -> list[float]:
    """Each dataset's share of the training group: its bytes^(1/T), normalised."""
    if temperature <= 0:
        raise ValueError(f"temperature {temperature}: must be positive")
    scaled = [e.bytes ** (1 / temperature) for e in entries]
    return [w / sum(scaled) for w in scaled]


def train_group(entries: list[MixtureEntry], valid_fraction: float, temperature: float = 1.0) -> str:
    end = f"{1 - valid_fraction:.6g}"
    return "train: " + ", ".join(f"{w:.6g} 0:{end} {e.prefix}"
                                 for w, e in zip(weights(entries, temperature), entries))


def budget(entries: list[MixtureEntry], shares: list[float], valid_fraction: float,
           budget_tokens: int) -> list[tuple[str, float, int, float]]:
    """(name, share, training pairs, epochs) of each dataset under a run's `budget_tokens`: its
    share of the tokens over the tokens of its training pairs (a run draws samples, packed rows of
    `--seq-length` tokens: its budget is about train-samples x seq-length, less the padding)."""
    rows = []
    for entry, share in zip(entries, shares):
        train_pairs = len(pair_range(entry.prefix, 0.0, 1 - valid_fraction))
        train_tokens = entry.tokens * train_pairs / max(entry.pairs, 1)
        rows.append((entry.name, share, train_pairs, share * budget_tokens / train_tokens if train_tokens else 0.0))
    return rows


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
