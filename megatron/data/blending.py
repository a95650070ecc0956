"""Weighted blending of datasets at sample (row) level: each global sample goes to the dataset
whose count lags its weight the most (C++), so every prefix of the blend follows the weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron.data import _cpp
from megatron.data.index_cache import cached_arrays


def normalized(weights: Sequence[float]) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"blending weights must be non-negative with a positive sum: {weights.tolist()}")
    return weights / weights.sum()


def blending_indices(
    weights: Sequence[float], size: int, cache_dir: str | None = None, description: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(dataset of each sample, index of the sample within its dataset) for `size` samples."""
    weights = normalized(weights)

    def build() -> dict[str, np.ndarray]:
        dataset_index, sample_index = _cpp.build_blending_indices(weights, size)
        return {"dataset_index": dataset_index, "sample_index": sample_index}

    if cache_dir:
        key = {"kind": "blending", "weights": weights.tolist(), "size": size, **(description or {})}
        arrays = cached_arrays(cache_dir, "blending", key, build)
    else:
        arrays = build()
    return arrays["dataset_index"], arrays["sample_index"]


def samples_per_dataset(dataset_index: np.ndarray, num_datasets: int) -> np.ndarray:
    return np.bincount(dataset_index, minlength=num_datasets)


class BlendedDataset:
    """Samples drawn from `datasets` by the blending index; sample `i` also says which dataset
    (`dataset_id`) it came from."""

    def __init__(self, datasets: Sequence, dataset_index: np.ndarray, sample_index: np.ndarray):
        self.datasets = list(datasets)
        self.dataset_index, self.sample_index = dataset_index, sample_index
        needed = samples_per_dataset(dataset_index, len(self.datasets))
        for dataset, count in zip(self.datasets, needed):
            if len(dataset) < count:
                raise ValueError(f"dataset {dataset!r} has {len(dataset)} samples; the blend needs {count}")

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        d = int(self.dataset_index[i])
        sample = self.datasets[d][int(self.sample_index[i])]
        return {**sample, "dataset_id": np.int64(d)}
