"""The batch helpers: attention mask (against a brute-force definition) and both loss
normalisations (against hand computation)."""

from __future__ import annotations

import numpy as np
import torch

from megatron.data.batch import collate
from megatron.models.common.attention import attention_mask
from megatron.models.common.loss import loss_weights


def test_attention_mask_matches_its_definition():
    rng = np.random.default_rng(0)
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2]])
    is_inputs = torch.from_numpy(rng.random(segments.shape) < 0.5)
    for prefix_lm in (False, True):
        mask = attention_mask(segments, is_inputs if prefix_lm else None)
        assert mask.shape == (2, 1, 8, 8)
        for b in range(2):
            for i in range(8):
                for j in range(8):
                    visible = j <= i or (prefix_lm and bool(is_inputs[b, i] and is_inputs[b, j]))
                    same = segments[b, i] == segments[b, j] != 0
                    assert bool(mask[b, 0, i, j]) == (visible and bool(same))


def test_token_mean_loss():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.float32)
    segments = torch.tensor([[1, 1, 1, 2], [1, 1, 1, 0]])
    losses = torch.tensor([[9.0, 1.0, 2.0, 9.0], [9.0, 9.0, 6.0, 9.0]])
    assert torch.isclose((loss_weights(mask, segments, False) * losses).sum(), torch.tensor(3.0))


def test_norm_target_loss_averages_targets_then_the_batch():
    # row 0: target A = tokens 1-3 (losses 1,2,3), target B = token 5 (loss 10); row 1: C = 4,6
    mask = torch.tensor([[0, 1, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    segments = torch.tensor([[1, 1, 1, 1, 2, 2], [1, 1, 1, 0, 0, 0]])
    losses = torch.tensor([[0, 1, 2, 3, 0, 10.0], [0, 4, 6, 0, 0, 0]])
    expected = (2.0 + 10.0 + 5.0) / 3
    weights = loss_weights(mask, segments, True)
    assert torch.isclose((weights * losses).sum(), torch.tensor(expected))
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    assert (weights[mask == 0] == 0).all()


def test_collate_stacks_samples():
    samples = [{"tokens": np.arange(4), "loss_mask": np.ones(4, np.float32)} for _ in range(3)]
    batch = collate(samples)
    assert batch["tokens"].shape == (3, 4) and batch["loss_mask"].dtype == torch.float32
