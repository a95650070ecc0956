"""Rotary position embeddings in transformers' `rotate_half` convention (the first and second
halves of a head's dimensions form the rotated pairs), with the angles in fp32, and the two
frequency rules this project implements: `default` (theta^(-2i/d)) and `llama3` (transformers' name:
piecewise rescaling by `factor` between a low- and a high-frequency wavelength, smoothed in
between). Positions restart at 0 at every packed pair (`positions_from_segments`), so each pair
of a packed row is rotated by exactly the angles it would be alone (attention within a pair sees
only position differences, so an offset would cancel in exact arithmetic, but not in the rounding
of large angles in bf16/fp16)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ROPE_TYPES = ("default", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """The piecewise frequency rescaling of `rope_type: llama3`."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


def megatron_rope_scaling(factor: float | None) -> dict[str, object]:
    """Megatron-LM's `--use-rope-scaling [--rope-scaling-factor F]` as model config fields: the
    `llama3` rule with low/high frequency factors 1 and 4, an original context of 8192, factor 8
    unless given."""
    return {"rope_type": "llama3", "rope_factor": factor or 8.0, "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0, "rope_original_max_positions": 8192}


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """`[head_dim / 2]` fp32 inverse frequencies, computed as transformers computes them."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    if scaling is None:
        return inv_freq
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """`[b, s]` int64: each token's offset from the first token of its segment (padding, segment
    0, counts on from where it starts; its outputs are never used)."""
    seq = segment_ids.shape[-1]
    index = torch.arange(seq, device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - first


def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`[b, 1, s, head_dim]` cosines and sines of the angles position x frequency (fp32, then
    cast to `dtype`), each frequency repeated for both halves."""
    angles = positions[..., None].to(torch.float32) * inv_freq.to(device=positions.device, dtype=torch.float32)
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x` `[b, heads, s, head_dim]` rotated by the angles of `cos_sin`."""
    return x * cos + _rotate_half(x) * sin
