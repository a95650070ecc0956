"""Blending by weight, packed datasets over the original Megatron-DeepSpeed MTF files (ag_news),
and the index cache, including one build shared by two gloo processes."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.data import write_pairs

from megatron.data.blending import blending_indices
from synthetic.corpus import xp3_like_pair_lengths
from megatron.data.data_config import DataGroup, DatasetRange
from megatron.data.mtf_datasets import build_group
from megatron.data.packing import PackedDataset, PackingConfig, build_packing_index
from megatron.data.pairs import PairDataset


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=8), size=st.integers(1, 5000))
def test_blending_follows_the_weights_at_every_prefix(weights, size):
    dataset_index, sample_index = blending_indices(weights, size)
    expected = np.asarray(weights) / sum(weights)
    for n in sorted({1, size // 3, size // 2, size}):
        counts = np.bincount(dataset_index[:n], minlength=len(weights))
        assert (np.abs(counts - expected * n) <= len(weights)).all()
    # each dataset's samples are taken in order 0, 1, 2, ...
    for d in range(len(weights)):
        taken = sample_index[dataset_index == d]
        assert (taken == np.arange(len(taken))).all()


def test_blending_rejects_bad_weights():
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        blending_indices([0.0, 0.0], 10)


def test_reference_pairs_line_up(reference_dir):
    pairs = PairDataset(reference_dir / "ag_news_prompt")
    assert len(pairs) == 100
    assert all(pairs.targets(i)[-1] == 2 and 2 not in pairs.inputs(i) for i in range(100))


def test_every_target_token_is_in_the_loss_exactly_once_per_epoch(reference_dir):
    pairs = PairDataset(reference_dir / "ag_news_prompt")
    config = PackingConfig(seq_length=256, seed=3)
    one_epoch = build_packing_index(pairs, config, 1).num_rows
    dataset = PackedDataset(pairs, build_packing_index(pairs, config, one_epoch), config, pad_id=3)
    seen = Counter()
    for i in range(len(dataset)):
        sample = dataset[i]
        for segment, pair in enumerate(dataset.row_pairs(i), start=1):
            in_segment = sample["segment_ids"] == segment
            target_labels = sample["labels"][in_segment & (sample["loss_mask"] == 1)]
            np.testing.assert_array_equal(target_labels, pairs.targets(pair))
            seen[int(pair)] += 1
    assert seen == Counter(range(100))


def test_rows_never_mix_datasets(reference_dir, tmp_path):
    write_pairs(tmp_path / "other", *xp3_like_pair_lengths(300), seed=5)
    group = DataGroup("train", (DatasetRange(2.0, str(reference_dir / "ag_news_prompt")),
                                DatasetRange(1.0, str(tmp_path / "other"))))
    blend = build_group(group, PackingConfig(256), 120, pad_id=3, cache_path=str(tmp_path / "cache"))
    counts = Counter()
    for i in range(len(blend)):
        sample = blend[i]
        d = int(sample["dataset_id"])
        counts[d] += 1
        source = blend.datasets[d]
        j = int(blend.sample_index[i])
        for segment, pair in enumerate(source.row_pairs(j), start=1):
            tokens = np.append(sample["tokens"], sample["labels"][-1])[: len(sample["tokens"])]
            in_segment = sample["segment_ids"] == segment
            expected = np.concatenate([source.pairs.inputs(pair), source.pairs.targets(pair)])
            np.testing.assert_array_equal(tokens[in_segment], expected[: in_segment.sum()])
    assert counts == {0: 80, 1: 40}


def test_splits_cut_each_dataset_by_pair_range(tmp_path):
    write_pairs(tmp_path / "d", *xp3_like_pair_lengths(200))
    train = build_group(DataGroup("train", (DatasetRange(1.0, str(tmp_path / "d"), 0.0, 0.9),)),
                        PackingConfig(512), 20, pad_id=3)
    valid = build_group(DataGroup("valid", (DatasetRange(1.0, str(tmp_path / "d"), 0.9, 1.0),)),
                        PackingConfig(512), 5, pad_id=3)
    assert (train.datasets[0].pairs.begin, train.datasets[0].pairs.end) == (0, 180)
    assert (valid.datasets[0].pairs.begin, valid.datasets[0].pairs.end) == (180, 200)


def test_index_cache_is_reused_and_keyed(tmp_path):
    pairs = write_pairs(tmp_path / "d", *xp3_like_pair_lengths(300))
    first = build_packing_index(pairs, PackingConfig(256, seed=1), 50, cache_dir=str(tmp_path / "c"))
    entries = sorted(p.name for p in (tmp_path / "c").iterdir())
    again = build_packing_index(pairs, PackingConfig(256, seed=1), 50, cache_dir=str(tmp_path / "c"))
    assert isinstance(again.pairs, np.memmap) and (again.pairs == first.pairs).all()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == entries
    build_packing_index(pairs, PackingConfig(256, seed=2), 50, cache_dir=str(tmp_path / "c"))
    build_packing_index(pairs, PackingConfig(256, seed=1, strategy="greedy"), 50, cache_dir=str(tmp_path / "c"))
    assert len(list((tmp_path / "c").iterdir())) == 3


def _build_in_process(rank: int, world: int, port: int, folder: str, results) -> None:
    """Both ranks ask for the same packing at once; each reports its index and how many times it
    ran the packing itself (`pack_epochs`, the cache entry's build, slowed down so a rank that
    builds too is never beaten to it by the other's finished entry)."""
    import megatron.data.packing as packing

    builds = 0
    pack_epochs = packing.pack_epochs

    def counted_pack_epochs(*args, **kwargs):
        nonlocal builds
        builds += 1
        time.sleep(0.5)
        return pack_epochs(*args, **kwargs)

    packing.pack_epochs = counted_pack_epochs
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        pairs = PairDataset(f"{folder}/d")
        dist.barrier()
        index = build_packing_index(pairs, PackingConfig(256, seed=4), 40, cache_dir=f"{folder}/cache")
        results[rank] = {"pairs": index.pairs.tolist(), "builds": builds}
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_one_rank_builds_the_cache_and_the_others_load_it(tmp_path):
    """Rank 0 packs and writes the entry; rank 1 packs nothing and loads the same index."""
    from helpers.distributed import free_port

    write_pairs(tmp_path / "d", *xp3_like_pair_lengths(300))
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_build_in_process, args=(2, free_port(), str(tmp_path), results), nprocs=2)
        assert results[0]["pairs"] == results[1]["pairs"]
        assert [results[rank]["builds"] for rank in (0, 1)] == [1, 0]
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 1
