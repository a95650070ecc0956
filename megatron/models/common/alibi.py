"""ALiBi: one slope per head, for any head count (BLOOM's rule: geometric slopes for the largest
power of two below the head count, then every other slope of the next power of two), and the
slice that belongs to a tensor-parallel rank."""

from __future__ import annotations

import math

import torch


def _powers(base: float, exponents: range) -> torch.Tensor:
    """base ** k in float32, as BLOOM computes them (bit for bit)."""
    return torch.pow(torch.tensor(base, dtype=torch.float32), torch.tensor(list(exponents), dtype=torch.int32))


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """float32 slopes, head order as in BLOOM."""
    power = 2 ** math.floor(math.log2(num_heads))
    slopes = _powers(2.0 ** (-(2.0 ** -(math.log2(power) - 3))), range(1, power + 1))
    if power != num_heads:
        remaining = min(power, num_heads - power)
        extra = _powers(2.0 ** (-(2.0 ** -(math.log2(2 * power) - 3))), range(1, 2 * remaining, 2))
        slopes = torch.cat([slopes, extra])
    return slopes


def alibi_slopes_for_rank(num_heads: int, tp_rank: int, tp_size: int) -> torch.Tensor:
    """The slopes of the heads held by tensor-parallel rank `tp_rank` (contiguous blocks)."""
    per_rank = num_heads // tp_size
    return alibi_slopes(num_heads)[tp_rank * per_rank : (tp_rank + 1) * per_rank]
