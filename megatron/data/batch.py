"""Turns packed rows into what the model and the loss need.

- `collate`: a list of samples -> a dict of tensors.
- `attention_mask`: causal AND same segment AND not padding (optionally bidirectional among a
  pair's inputs: prefix-LM) as a dense `[b, 1, s, s]` boolean, for the reference attention only.
  Fused kernels take `segment_ids` (and `is_inputs`) directly and never build it.
- `loss_weights`: per-token weights whose dot product with the per-token losses is the loss of
  the micro-batch, in either normalisation: the token mean (default) or `--norm-target-loss`
  (each target's mean over its tokens, then the mean over the micro-batch's targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


def attention_mask(segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None) -> torch.Tensor:
    """`[b, 1, s, s]`, True where query i may attend to key j: j <= i (or, with `is_inputs`,
    both are inputs of the pair), same segment, not padding."""
    seq = segment_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = segment_ids[:, :, None] != 0
    allowed = causal
    if is_inputs is not None:
        allowed = causal | (is_inputs[:, :, None] & is_inputs[:, None, :])
    return (allowed & same & real).unsqueeze(1)


def loss_weights(loss_mask: torch.Tensor, segment_ids: torch.Tensor, norm_target_loss: bool) -> torch.Tensor:
    """Weights `w` with `loss = (w * token_losses).sum()`; they sum to 1 unless no token counts."""
    mask = loss_mask.to(torch.float32)
    if not norm_target_loss:
        return mask / mask.sum().clamp(min=1.0)
    # Tokens per (row, segment), looked up per position: each target then sums to 1.
    num_segments = int(segment_ids.max()) + 1
    keys = (segment_ids.long() + num_segments * torch.arange(len(segment_ids)).unsqueeze(1)).flatten()
    counts = torch.zeros(len(segment_ids) * num_segments).index_add_(0, keys, mask.flatten())
    per_token_count = counts[keys].view_as(mask)
    num_targets = (counts > 0).sum().clamp(min=1)
    return torch.where(mask > 0, mask / per_token_count.clamp(min=1.0), mask) / num_targets
