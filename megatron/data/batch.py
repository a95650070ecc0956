"""Packed rows into a batch: `collate` stacks samples (dicts of arrays) into a dict of tensors.
The model turns `segment_ids` into its attention mask (`models/common/attention.py`) and
`loss_mask` into loss weights (`models/common/loss.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}
