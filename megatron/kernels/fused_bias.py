"""The elementwise tails of the blocks' linear layers: BLOOM's bias + GeLU after
`mlp.dense_h_to_4h`, and bias + dropout + residual after `self_attention.dense` and
`mlp.dense_4h_to_h` (Megatron's `--bias-gelu-fusion` and `--bias-dropout-fusion`), or dropout +
residual where the layer has added its own bias.

Each is one plain PyTorch function, the reference that runs anywhere. `fused(function)` is the
same function compiled by `torch.compile`: one kernel for the forward and one for the backward
instead of a pass over the activations per operation. Compiled dropout draws its masks from the
same default generator, so seeding, checkpoint resumption and activation recomputation keep
working, but not the same masks as the eager reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """BLOOM's GeLU (tanh approximation) of `x + bias`."""
    return F.gelu(x + bias, approximate="tanh")


def bias_dropout_add(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, p: float,
                     training: bool) -> torch.Tensor:
    """`residual + dropout(x + bias)`: a branch's output joining the residual stream."""
    return residual + F.dropout(x + bias, p, training)


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`residual + dropout(x)`."""
    return residual + F.dropout(x, p, training)


@functools.cache
def fused(function: Callable) -> Callable:
    """`function` compiled by `torch.compile` (compilation happens at the first call), one
    compiled twin per function and process."""
    return torch.compile(function)
