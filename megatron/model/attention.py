"""Attention over packed rows: causal AND same segment AND ALiBi (optionally bidirectional
among a pair's inputs), behind one interface with several backends.

`attention(q, k, v, slopes, segment_ids, is_inputs, dropout_p) -> context`, with q, k, v of shape
`[batch, heads, seq, head_dim]` and `slopes` the ALiBi slopes of these heads. The `reference`
backend builds the float bias (ALiBi + mask) and calls PyTorch's SDPA: exact, runs everywhere.
Padding queries (segment 0) see only themselves, so no softmax row is empty; their outputs are
never used by the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from megatron.data.batch import attention_mask


def alibi_bias(slopes: torch.Tensor, seq_length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """`[1, heads, s, s]`: slope * (j - i), i.e. a penalty growing with the distance to the key."""
    positions = torch.arange(seq_length, device=device)
    distance = (positions[None, :] - positions[:, None]).to(torch.float32)
    return (slopes.to(device)[:, None, None] * distance).to(dtype).unsqueeze(0)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    segment_ids: torch.Tensor,
    is_inputs: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    seq = q.shape[-2]
    allowed = attention_mask(segment_ids, is_inputs)
    allowed = allowed | torch.eye(seq, dtype=torch.bool, device=q.device)
    bias = alibi_bias(slopes, seq, q.dtype, q.device).masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


BACKENDS: dict[str, Callable[..., torch.Tensor]] = {"reference": reference_attention}


def get_backend(name: str) -> Callable[..., torch.Tensor]:
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}: choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
