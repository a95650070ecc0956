"""An evaluation's (inputs, choice) pairs as packed rows, so that one forward pass scores many
choices: each choice of each example is a pair, tokenized as xP3 pairs are (the inputs as they
are, the target as `" " + choice`, here without the end token), packed best-fit into rows of
`seq_length + 1` tokens with our segment ids, where the loss mask marks exactly the choice
tokens. With `prepend_bos` the inputs begin with the tokenizer's BOS token, as data preprocessed
with `--prepend-bos inputs` do. A pair longer than a row keeps the last input tokens that fit
beside its choice, after the BOS, which stays first.

Pairs are numbered example by example, choice by choice; `ChoiceRows.choice_sums` turns a
micro-batch's per-token log-probabilities into each pair's summed log-probability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron.data import _cpp
from megatron.data.batch import collate
from megatron.data.packing import PackingConfig, kept_input_lengths, packed_row
from megatron.evaluation.examples import ChoiceExample, ExampleError


@dataclass(frozen=True)
class EncodedChoices:
    """The token ids of every pair, with inputs already cut to what fits a row."""

    inputs: list[np.ndarray]  # per pair
    choices: list[np.ndarray]  # per pair
    first_pair: np.ndarray  # example e's pairs are first_pair[e] .. first_pair[e + 1] - 1
    truncated_pairs: int  # pairs whose inputs lost tokens on the left
    config: PackingConfig  # the rows they are cut for
    bos: int | None  # the token id first in every pair's inputs, or None

    @property
    def tokenization(self) -> str:
        """The rule the inputs were tokenized by, in words (for reports)."""
        return "no BOS" if self.bos is None else f"BOS before inputs (id {self.bos})"

    @property
    def num_pairs(self) -> int:
        return len(self.choices)

    def choice_lengths(self) -> np.ndarray:
        """Tokens per choice (what --length-normalize divides by)."""
        return np.array([len(c) for c in self.choices], np.int64)


def encode_choices(examples: Sequence[ChoiceExample], tokenizer, seq_length: int,
                   prepend_bos: bool = False) -> EncodedChoices:
    """Tokenize every (inputs, choice) pair for rows of `seq_length + 1` tokens, the inputs after
    the tokenizer's BOS token with `prepend_bos` (a ValueError naming the tokenizer file where it
    has none)."""
    bos = [tokenizer.require_bos("the start of each example's inputs")] if prepend_bos else []
    input_ids = [bos + ids for ids in tokenizer.encode_batch([e.inputs for e in examples])]
    counts = np.array([len(e.choices) for e in examples], np.int64)
    first_pair = np.concatenate([[0], np.cumsum(counts)])
    example_of_pair = np.repeat(np.arange(len(examples)), counts)
    choice_ids = tokenizer.encode_batch([" " + choice for e in examples for choice in e.choices])
    config = PackingConfig(seq_length, overlong="truncate_inputs")
    input_sizes = np.array([len(input_ids[e]) for e in example_of_pair], np.int64)
    choice_sizes = np.array([len(c) for c in choice_ids], np.int64)
    kept = kept_input_lengths(input_sizes, choice_sizes, config)
    for pair in np.flatnonzero(kept == 0):
        example = examples[example_of_pair[pair]]
        raise ExampleError(f"{example.where or example.id}: choice {pair - first_pair[example_of_pair[pair]]} has "
                           f"{choice_sizes[pair]} tokens, no room for its inputs in a row of {config.capacity} "
                           "(raise --seq-length)")
    # the last `keep` input tokens, except that a BOS stays first: the tokens after it are cut
    inputs = [np.asarray(bos + input_ids[e][len(bos) + size - keep:], np.int64)
              for e, size, keep in zip(example_of_pair, input_sizes, kept)]
    return EncodedChoices(inputs, [np.asarray(c, np.int64) for c in choice_ids], first_pair,
                          int((kept < input_sizes).sum()), config, bos[0] if bos else None)


class ChoiceRows:
    """The pairs of `encoded` packed into rows; a row is built when asked for."""

    def __init__(self, encoded: EncodedChoices, pad_id: int):
        self.encoded = encoded
        config = encoded.config
        self.capacity = config.capacity
        self.pad_id = pad_id
        lengths = np.array([len(i) + len(c) for i, c in zip(encoded.inputs, encoded.choices)], np.int32)
        self.offsets, self.pairs = _cpp.pack_pairs(np.arange(encoded.num_pairs, dtype=np.int64), lengths,
                                                   self.capacity, config.strategy, config.window)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row_pairs(self, row: int) -> np.ndarray:
        """The pairs of a row, by segment (segment s holds `row_pairs(row)[s - 1]`); none past
        the last row (an empty row pads the last micro-batch)."""
        if row >= len(self):
            return np.zeros(0, np.int64)
        return self.pairs[self.offsets[row]:self.offsets[row + 1]]

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """A micro-batch of the given rows, collated as training batches are."""
        encoded = self.encoded
        return collate([packed_row(((encoded.inputs[p], encoded.choices[p]) for p in self.row_pairs(r)),
                                   self.capacity, self.pad_id) for r in rows])

    def choice_sums(self, rows: Sequence[int], token_log_probs: torch.Tensor,
                    segment_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The pairs of `rows` and their summed log-probabilities, from a micro-batch's
        log-probability of each label (zero outside the loss mask)."""
        segments = segment_ids.long().cpu()
        sums = torch.zeros(len(rows), int(segments.max()) + 1, dtype=torch.float64)
        sums.scatter_add_(1, segments, token_log_probs.double().cpu())
        pairs, values = [], []
        for i, row in enumerate(rows):
            members = self.row_pairs(row)
            pairs.append(members)
            values.append(sums[i, 1:len(members) + 1].numpy())
        return np.concatenate(pairs), np.concatenate(values)
