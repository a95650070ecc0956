"""Packing of (input, target) pairs into rows: the C++ packers' invariants (hypothesis), rows and
masks of the packed dataset, determinism, overlong pairs, and packing efficiency."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.data import write_pairs

from megatron.data import _cpp
from synthetic.corpus import xp3_like_pair_lengths
from megatron.data.packing import PackedDataset, PackingConfig, build_packing_index, packing_efficiency
from megatron.data.pairs import PairDataset

STRATEGIES = ["greedy", "best_fit"]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=300),
    capacity=st.integers(64, 200),
    strategy=st.sampled_from(STRATEGIES),
    window=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_packers_place_every_pair_once_within_capacity(lengths, capacity, strategy, window, seed):
    lengths = np.array(lengths, np.int32)
    order = np.random.default_rng(seed).permutation(len(lengths))
    offsets, pairs = _cpp.pack_pairs(order, lengths, capacity, strategy, window)
    assert offsets[0] == 0 and offsets[-1] == len(pairs) and (np.diff(offsets) > 0).all()
    assert sorted(pairs.tolist()) == list(range(len(lengths)))
    row_lengths = np.add.reduceat(lengths[pairs], offsets[:-1])
    assert (row_lengths <= capacity).all()
    again = _cpp.pack_pairs(order, lengths, capacity, strategy, window)
    assert (again[0] == offsets).all() and (again[1] == pairs).all()


def test_packers_reject_bad_input():
    with pytest.raises(ValueError, match="outside \\[1, 10\\]"):
        _cpp.pack_pairs(np.arange(2), np.array([3, 11], np.int32), 10, "greedy")
    with pytest.raises(ValueError, match="unknown packing strategy"):
        _cpp.pack_pairs(np.arange(2), np.array([3, 4], np.int32), 10, "first_fit")
    with pytest.raises(ValueError, match="holds pair 5"):
        _cpp.pack_pairs(np.array([5]), np.array([3], np.int32), 10, "greedy")


def check_row(sample: dict, dataset: PackedDataset, i: int, seq_length: int) -> None:
    """The row's tokens, segments and masks agree with the pairs it holds."""
    tokens, labels, mask = sample["tokens"], sample["labels"], sample["loss_mask"]
    segments, is_inputs = sample["segment_ids"], sample["is_inputs"]
    assert all(len(a) == seq_length for a in (tokens, labels, mask, segments, is_inputs))
    assert (labels[:-1] == tokens[1:]).all()
    assert (np.diff(segments[segments > 0]) >= 0).all()  # segments are contiguous and ordered
    used = np.flatnonzero(segments)
    assert len(used) == 0 or (used == np.arange(len(used))).all()  # padding only at the end
    full = np.append(tokens, labels[-1])
    full_segments = np.append(segments, 0)
    for segment, pair in enumerate(dataset.row_pairs(i), start=1):
        kept = int(dataset.index.input_lengths[pair])
        expected = np.concatenate([dataset.pairs.inputs(pair, kept), dataset.pairs.targets(pair)])
        where = np.flatnonzero(full_segments == segment)
        if where.size and where[-1] == seq_length - 1 and len(expected) == len(where) + 1:
            where = np.append(where, seq_length)  # the row's last token lives only in labels
        np.testing.assert_array_equal(full[where], expected)
        assert is_inputs[where[where < seq_length]].sum() == min(kept, (where < seq_length).sum())
        # the loss falls exactly on this pair's target tokens (as labels)
        in_segment = np.flatnonzero(segments == segment)
        target_labels = labels[in_segment][mask[in_segment] == 1]
        np.testing.assert_array_equal(target_labels, dataset.pairs.targets(pair))
    assert mask[segments == 0].sum() == 0


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 80), st.integers(1, 12)), min_size=1, max_size=60),
    seq_length=st.integers(40, 128),
    strategy=st.sampled_from(STRATEGIES),
    overlong=st.sampled_from(["skip", "truncate_inputs"]),
    seed=st.integers(0, 1000),
)
def test_packed_rows_agree_with_their_pairs(lengths, seq_length, strategy, overlong, seed):
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pairs(Path(tmp) / "p", [a for a, _ in lengths], [b for _, b in lengths], seed=seed)
        config = PackingConfig(seq_length, strategy, window=8, overlong=overlong, seed=seed)
        fits = np.array([a + b <= seq_length + 1 for a, b in lengths])
        if overlong == "truncate_inputs":
            fits = np.array([b <= seq_length for _, b in lengths])
        if not fits.any():
            with pytest.raises(ValueError, match="none of its"):
                build_packing_index(pairs, config, 1)
            return
        index = build_packing_index(pairs, config, 30)
        dataset = PackedDataset(pairs, index, config, pad_id=3)
        assert len(dataset) == 30
        for i in range(len(dataset)):
            check_row(dataset[i], dataset, i, seq_length)
        # one epoch holds every usable pair once; skipped pairs are exactly the unusable ones
        epoch_rows = build_packing_index(pairs, config, 1).num_rows
        first_epoch = Counter(index.pairs[: index.offsets[epoch_rows]].tolist())
        assert sorted(first_epoch) == np.flatnonzero(fits).tolist()
        assert set(first_epoch.values()) == {1}
        assert ((index.input_lengths == 0) == ~fits).all()
        # the same seed gives the same rows
        again = build_packing_index(pairs, config, 30)
        assert (again.sample_rows == index.sample_rows).all() and (again.pairs == index.pairs).all()


def test_epochs_reshuffle_and_seeds_differ(tmp_path):
    pairs = write_pairs(tmp_path / "p", *xp3_like_pair_lengths(500))
    config = PackingConfig(256, seed=1)
    one_epoch = build_packing_index(pairs, config, 1).num_rows
    index = build_packing_index(pairs, config, 3 * one_epoch)
    epochs = np.split(index.pairs, [index.offsets[one_epoch]])
    assert not np.array_equal(epochs[0][:50], epochs[1][:50])
    other_seed = build_packing_index(pairs, PackingConfig(256, seed=2), 1)
    assert not np.array_equal(other_seed.pairs, index.pairs[: len(other_seed.pairs)])


def test_truncate_inputs_keeps_the_end_of_the_input(tmp_path):
    pairs = write_pairs(tmp_path / "p", [50, 10], [5, 5])
    config = PackingConfig(20, overlong="truncate_inputs")
    index = build_packing_index(pairs, config, 2)
    assert index.input_lengths.tolist() == [16, 10]
    np.testing.assert_array_equal(pairs.inputs(0, 16), pairs.inputs(0)[-16:])
    skipped = build_packing_index(pairs, PackingConfig(20), 1)
    assert skipped.input_lengths.tolist() == [0, 10]


def test_truncate_inputs_keeps_a_leading_bos_first(tmp_path):
    """Inputs made with `--prepend-bos` keep the BOS when cut: BOS + the last tokens, the same
    count as without it; a pair not starting with the BOS is cut as before."""
    from megatron.data.indexed_dataset import IndexedDatasetBuilder

    bos = 1
    inputs = [np.array([bos, *range(10, 59)]), np.arange(100, 150)]
    for key, docs in (("inputs", inputs), ("targets", [np.arange(5, 10)] * 2)):
        with IndexedDatasetBuilder(f"{tmp_path / 'p'}_{key}_document", np.uint16) as builder:
            for doc in docs:
                builder.add_document(doc)
            builder.finalize()
    pairs = PairDataset(tmp_path / "p")
    config = PackingConfig(20, overlong="truncate_inputs", bos_id=bos)
    index = build_packing_index(pairs, config, 2)
    assert index.input_lengths.tolist() == [16, 16]
    row = PackedDataset(pairs, index, config, pad_id=0)
    rows = [row[i]["tokens"].tolist() for i in range(len(row))]
    assert [bos, *range(44, 59), 5, 6, 7, 8] in [r[:20] for r in rows]
    assert pairs.inputs(1, 16, bos).tolist() == list(range(134, 150))
    assert pairs.inputs(0, 16).tolist() == list(range(43, 59))  # without the rule: the last 16


@pytest.mark.parametrize("seq_length", [512, 2048])
def test_best_fit_beats_greedy_on_xp3_like_pair_lengths(tmp_path, seq_length):
    inputs, targets = xp3_like_pair_lengths(200_000)
    lengths = (inputs + targets).astype(np.int32)
    usable = np.flatnonzero(lengths <= seq_length + 1)
    order = np.random.default_rng(0).permutation(usable)
    efficiency = {}
    for strategy in STRATEGIES:
        offsets, pairs = _cpp.pack_pairs(order, lengths, seq_length + 1, strategy, 1024)
        efficiency[strategy] = lengths[pairs].sum() / ((len(offsets) - 1) * (seq_length + 1))
    assert efficiency["best_fit"] >= 0.99
    assert efficiency["greedy"] < 0.93
    assert efficiency["best_fit"] > efficiency["greedy"]


def test_packing_efficiency_is_reported(tmp_path, caplog):
    pairs = write_pairs(tmp_path / "p", *xp3_like_pair_lengths(2000))
    with caplog.at_level("INFO"):
        index = build_packing_index(pairs, PackingConfig(512), 10)
    assert "packing efficiency" in caplog.text
    assert 0.9 < packing_efficiency(index.input_lengths, pairs.target_sizes, index.pairs, index.num_rows, 513) <= 1.0
