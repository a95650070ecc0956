"""Attention over packed rows: causal AND same segment, with ALiBi or without (RoPE families
rotate q and k before), optionally bidirectional among a pair's inputs, behind one interface with
several backends.

`attention(q, k, v, slopes, segment_ids, is_inputs, dropout_p) -> context`, with q of shape
`[batch, heads, seq, head_dim]`, k and v `[batch, kv_heads, seq, head_dim]` (grouped-query
attention: query head i reads KV head i // (heads / kv_heads)), and `slopes` the ALiBi slopes of
these heads or None. The `reference`
backend builds the dense mask (`attention_mask`) and the float bias (ALiBi + mask) and calls
PyTorch's SDPA: exact, runs everywhere, but holds `[s, s]` per head. The `flex` backend (GPU) is
FlexAttention, compiled: ALiBi as a score modifier, the mask as a block mask built once per
micro-batch, so blocks wholly outside a segment (other pairs, padding) are skipped and `[s, s]` is
never materialised; it has no dropout. The `triton` backend is our FlashAttention-2 kernel
(`kernels/flash_attention.py`): the same block skipping, with attention dropout in the kernel;
on CPU it runs in Triton's interpreter (`TRITON_INTERPRET=1`), for tests.
Padding queries (segment 0) see only themselves, so no softmax row is empty; their outputs are
never used by the loss.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F


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


def alibi_bias(slopes: torch.Tensor | None, seq_length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """`[1, heads, s, s]`: slope * (j - i), i.e. a penalty growing with the distance to the key;
    `[1, 1, s, s]` zeros without slopes."""
    if slopes is None:
        return torch.zeros(1, 1, seq_length, seq_length, dtype=dtype, device=device)
    positions = torch.arange(seq_length, device=device)
    distance = (positions[None, :] - positions[:, None]).to(torch.float32)
    return (slopes.to(device)[:, None, None] * distance).to(dtype).unsqueeze(0)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor | None,
    segment_ids: torch.Tensor,
    is_inputs: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    seq = q.shape[-2]
    allowed = attention_mask(segment_ids, is_inputs)
    allowed = allowed | torch.eye(seq, dtype=torch.bool, device=q.device)
    bias = alibi_bias(slopes, seq, q.dtype, q.device).masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                          enable_gqa=k.shape[1] != q.shape[1])


class _BlockMasks:
    """The block mask of the micro-batch being computed, built once and reused by every layer:
    kept while the very same `segment_ids` and `is_inputs` tensors come back unmodified (held by
    weak reference: a new micro-batch's tensors may reuse the old ones' memory, never their
    identity while those live)."""

    def __init__(self):
        self.refs, self.versions, self.mask = (), (), None

    def get(self, segment_ids: torch.Tensor, is_inputs: torch.Tensor | None):
        tensors = (segment_ids, is_inputs)
        versions = tuple(None if t is None else t._version for t in tensors)
        same = len(self.refs) == 2 and all((ref is None and t is None) or (ref is not None and ref() is t)
                                           for ref, t in zip(self.refs, tensors))
        if not same or versions != self.versions:
            self.refs = tuple(None if t is None else weakref.ref(t) for t in tensors)
            self.versions, self.mask = versions, _block_mask(segment_ids, is_inputs)
        return self.mask


def _block_mask(segment_ids: torch.Tensor, is_inputs: torch.Tensor | None):
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q, k):
        same = (segment_ids[b, q] == segment_ids[b, k]) & (segment_ids[b, q] > 0)
        visible = k <= q
        if is_inputs is not None:  # prefix LM: a pair's inputs see each other both ways
            visible = visible | (is_inputs[b, q] & is_inputs[b, k])
        return (q == k) | (same & visible)

    batch, seq = segment_ids.shape
    return create_block_mask(allowed, batch, None, seq, seq, device=segment_ids.device)


_block_masks = _BlockMasks()


@functools.cache
def _compiled_flex_attention() -> Callable:
    """FlexAttention compiled once per process (compilation happens at its first call)."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex, dynamic=False)


def _alibi_score_mod(slopes: torch.Tensor) -> Callable:
    """ALiBi as FlexAttention's score modifier."""
    def alibi(score, b, h, q_index, k_index):
        return score + slopes[h] * (k_index - q_index)

    return alibi


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor | None, segment_ids: torch.Tensor,
                   is_inputs: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """The `reference_attention` interface on FlexAttention (see the module docstring)."""
    if dropout_p:
        raise ValueError("the flex attention backend has no attention dropout: use --attention-dropout 0 "
                         "or --attention-backend reference")
    alibi = None if slopes is None else _alibi_score_mod(slopes.to(device=q.device, dtype=torch.float32))
    return _compiled_flex_attention()(q, k, v, score_mod=alibi, block_mask=_block_masks.get(segment_ids, is_inputs),
                                      enable_gqa=k.shape[1] != q.shape[1])


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor | None,
                     segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """The `reference_attention` interface on our Triton kernel (imported at first use: Triton
    is optional, and on CPU its interpreter must be chosen before it is imported)."""
    from megatron.kernels.flash_attention import flash_attention as triton_flash_attention

    return triton_flash_attention(q, k, v, slopes, segment_ids, is_inputs, dropout_p)


BACKENDS: dict[str, Callable[..., torch.Tensor]] = {"reference": reference_attention, "flex": flex_attention,
                                                    "triton": triton_attention}


def get_backend(name: str) -> Callable[..., torch.Tensor]:
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}: choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
