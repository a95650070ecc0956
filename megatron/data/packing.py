"""Packing whole (input, target) pairs into rows of `seq_length + 1` tokens.

Each epoch shuffles the usable pairs (deterministic in the seed and the epoch) and packs them, in
C++, with one of two strategies: `greedy` fills rows in shuffled order, as Megatron-DeepSpeed's
packed MTF dataset does; `best_fit` (default) runs best-fit decreasing over a sliding window of
shuffled pairs and wastes far fewer pad tokens. Rows of an epoch are then shuffled again, and
epochs are added until the requested number of samples is reached.

A row yields `tokens` and `labels` (the row shifted by one), `loss_mask` (1 exactly where the
label is a target token of the same pair, its end token included), `segment_ids` (1..k per pair,
0 for padding) and `is_inputs` (input tokens, for a prefix-LM attention mode).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from megatron.data import _cpp
from megatron.data.index_cache import cached_arrays
from megatron.data.pairs import PairDataset

log = logging.getLogger(__name__)

STRATEGIES = ("best_fit", "greedy")
OVERLONG_POLICIES = ("skip", "truncate_inputs")


@dataclass(frozen=True)
class PackingConfig:
    seq_length: int
    strategy: str = "best_fit"
    window: int = 1024
    overlong: str = "skip"
    seed: int = 1234
    # with truncate_inputs: a pair whose inputs begin with this token (the tokenizer's BOS, put
    # there by `tools/preprocess_data.py --prepend-bos`) keeps it first when its inputs are cut
    bos_id: int | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"packing strategy {self.strategy!r}: choose one of {STRATEGIES}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong pairs {self.overlong!r}: choose one of {OVERLONG_POLICIES}")
        if self.seq_length < 2 or self.window < 1:
            raise ValueError("seq_length must be at least 2 and the packing window at least 1")

    @property
    def capacity(self) -> int:
        return self.seq_length + 1


def kept_input_lengths(input_sizes: np.ndarray, target_sizes: np.ndarray, config: PackingConfig) -> np.ndarray:
    """Input tokens kept per pair: all, or (truncate_inputs) the last ones that fit beside the
    target; 0 marks a pair that cannot be used (it is skipped)."""
    inputs = input_sizes.astype(np.int64)
    targets = target_sizes.astype(np.int64)
    fits = inputs + targets <= config.capacity
    if config.overlong == "skip":
        return np.where(fits, inputs, 0)
    room = config.capacity - targets
    return np.where(fits, inputs, np.where(room >= 1, np.minimum(inputs, room), 0))


@dataclass
class PackingIndex:
    offsets: np.ndarray  # row r holds pair ids pairs[offsets[r]:offsets[r+1]]
    pairs: np.ndarray
    sample_rows: np.ndarray  # the row of each sample
    input_lengths: np.ndarray  # input tokens kept per pair (0: skipped)

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1


def pack_epochs(
    input_sizes: np.ndarray, target_sizes: np.ndarray, config: PackingConfig, num_samples: int, name: str
) -> dict[str, np.ndarray]:
    """Shuffle and pack whole epochs of the pairs (given by their lengths) until there are
    `num_samples` rows; the arrays of a PackingIndex, plus the number of epochs."""
    input_lengths = kept_input_lengths(input_sizes, target_sizes, config)
    usable = np.flatnonzero(input_lengths > 0)
    if len(usable) == 0:
        raise ValueError(f"{name}: none of its {len(input_sizes)} pairs fits a row of {config.capacity} tokens")
    lengths = (input_lengths + target_sizes).astype(np.int32)
    offsets, members, sample_rows = [np.zeros(1, np.int64)], [], []
    num_rows = epoch = 0
    while num_rows < num_samples:
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(usable)
        epoch_offsets, epoch_pairs = _cpp.pack_pairs(
            order, lengths, config.capacity, config.strategy, config.window
        )
        offsets.append(epoch_offsets[1:] + offsets[-1][-1])
        members.append(epoch_pairs)
        epoch_rows = len(epoch_offsets) - 1
        sample_rows.append(rng.permutation(epoch_rows) + num_rows)
        num_rows += epoch_rows
        epoch += 1
    return {
        "offsets": np.concatenate(offsets),
        "pairs": np.concatenate(members),
        "sample_rows": np.concatenate(sample_rows)[:num_samples],
        "input_lengths": input_lengths.astype(np.int32),
        "epochs": np.array(epoch),
    }


def build_packing_index(
    pairs: PairDataset, config: PackingConfig, num_samples: int, cache_dir: str | None = None
) -> PackingIndex:
    """The packing of `pairs` into at least `num_samples` rows (cached when `cache_dir` is set)."""
    description = {"kind": "packing", **pairs.signature(), "num_samples": int(num_samples), **asdict(config)}

    def build() -> dict[str, np.ndarray]:
        return pack_epochs(pairs.input_sizes, pairs.target_sizes, config, num_samples, pairs.prefix)

    arrays = cached_arrays(cache_dir, "packing", description, build) if cache_dir else build()
    index = PackingIndex(arrays["offsets"], arrays["pairs"], arrays["sample_rows"], arrays["input_lengths"])
    log.info(
        "%s [%d, %d): %d rows over %d epoch(s), %s packing efficiency %.2f%% non-pad tokens, "
        "%d pairs skipped as longer than a row", pairs.prefix, pairs.begin, pairs.end,
        index.num_rows, int(arrays["epochs"]), config.strategy,
        100 * packing_efficiency(index.input_lengths, pairs.target_sizes, index.pairs, index.num_rows, config.capacity),
        int((index.input_lengths == 0).sum()),
    )
    return index


def packing_efficiency(input_lengths: np.ndarray, target_sizes: np.ndarray, packed_pairs: np.ndarray,
                       num_rows: int, capacity: int) -> float:
    """Non-pad tokens over all tokens of `num_rows` rows holding `packed_pairs` (ids into the
    kept input lengths and the target sizes)."""
    tokens = input_lengths[packed_pairs].sum() + target_sizes[packed_pairs].sum()
    return float(tokens) / max(1, num_rows * capacity)


class PackedDataset:
    """Samples of packed rows: sample `i` is row `index.sample_rows[i]`."""

    def __init__(self, pairs: PairDataset, index: PackingIndex, config: PackingConfig, pad_id: int):
        self.pairs, self.index, self.config, self.pad_id = pairs, index, config, pad_id

    def __len__(self) -> int:
        return len(self.index.sample_rows)

    def row_pairs(self, i: int) -> np.ndarray:
        row = int(self.index.sample_rows[i])
        return self.index.pairs[self.index.offsets[row] : self.index.offsets[row + 1]]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        pieces = ((self.pairs.inputs(pair, int(self.index.input_lengths[pair]), self.config.bos_id),
                   self.pairs.targets(pair)) for pair in self.row_pairs(i))
        return packed_row(pieces, self.config.capacity, self.pad_id)


def packed_row(pairs: Iterable[tuple[np.ndarray, np.ndarray]], capacity: int, pad_id: int) -> dict[str, np.ndarray]:
    """One row of `capacity` tokens holding `pairs` (inputs, targets) in order, padded with
    `pad_id`: the sample's five arrays of `seq_length = capacity - 1` (module docstring)."""
    row = np.full(capacity, pad_id, np.int64)
    segments = np.zeros(capacity, np.int32)
    is_inputs = np.zeros(capacity, bool)
    is_target = np.zeros(capacity, bool)
    position = 0
    for segment, (inputs, targets) in enumerate(pairs, start=1):
        end_inputs = position + len(inputs)
        end = end_inputs + len(targets)
        row[position:end_inputs] = inputs
        row[end_inputs:end] = targets
        segments[position:end] = segment
        is_inputs[position:end_inputs] = True
        is_target[end_inputs:end] = True
        position = end
    same_segment = segments[1:] == segments[:-1]
    return {
        "tokens": row[:-1],
        "labels": row[1:],
        "loss_mask": (is_target[1:] & same_segment).astype(np.float32),
        "segment_ids": segments[:-1],
        "is_inputs": is_inputs[:-1],
    }
