"""The loss of a micro-batch of packed rows, in one place: the per-token weights of either
normalisation, the vocabulary-parallel cross entropy through the full logits, and the dispatch
between that reference path and the chunked LM head + loss kernel (`kernels/lm_head_loss.py`).

`target_log_probs` gives the same cross entropy's other use: the log-probability of each target
token (what zero-shot evaluation sums per answer choice), through the logits of those tokens only.

`loss_weights(loss_mask, segment_ids, norm_target_loss)` gives weights whose dot product with the
per-token losses is the loss: the token mean over the micro-batch (default) or, with
`--norm-target-loss`, each target's mean over its tokens, then the mean over the targets.
"""

from __future__ import annotations

import torch

from megatron.kernels.lm_head_loss import lm_head_loss
from megatron.models.common.lm_head import lm_logits
from megatron.utils.megatron_core import tensor_parallel


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


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy over the vocabulary, split across tensor-parallel ranks."""
    return tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)


def packed_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor,
                segment_ids: torch.Tensor, norm_target_loss: bool) -> torch.Tensor:
    """The loss of a micro-batch of packed rows: target tokens only, in either normalisation."""
    weights = loss_weights(loss_mask, segment_ids, norm_target_loss).to(logits.device)
    return (token_losses(logits, labels) * weights).sum()


def head_and_loss(hidden: torch.Tensor, embedding_weight: torch.Tensor, labels: torch.Tensor,
                  loss_mask: torch.Tensor, segment_ids: torch.Tensor, norm_target_loss: bool,
                  method: str) -> torch.Tensor:
    """The LM head and `packed_loss` from the final hidden states: through the full logits
    (`reference`), or chunked over the target tokens only (`chunked`), which never holds them."""
    if method == "chunked":
        weights = loss_weights(loss_mask, segment_ids, norm_target_loss)
        return lm_head_loss(hidden, embedding_weight, labels.to(hidden.device), weights)
    return packed_loss(lm_logits(hidden, embedding_weight, gather=False), labels, loss_mask, segment_ids,
                       norm_target_loss)


def target_log_probs(hidden: torch.Tensor, embedding_weight: torch.Tensor, labels: torch.Tensor,
                     loss_mask: torch.Tensor, chunk_tokens: int = 4096) -> torch.Tensor:
    """`[batch, seq]` fp32: each label's log-probability where `loss_mask` is set, 0 elsewhere;
    the LM head is applied to those positions only, `chunk_tokens` at a time (the fp32 logits of
    a chunk: chunk x vocabulary / TP)."""
    mask = loss_mask.to(hidden.device) > 0
    positions = mask.flatten().nonzero().squeeze(1)
    hidden, labels = hidden.flatten(0, 1), labels.to(hidden.device).flatten()
    out = torch.zeros(mask.numel(), dtype=torch.float32, device=hidden.device)
    for chunk in positions.split(chunk_tokens):  # the same chunks on every TP rank (one mask)
        logits = lm_logits(hidden[chunk], embedding_weight, gather=False)
        out[chunk] = -token_losses(logits, labels[chunk])
    return out.view(mask.shape)
