"""Megatron's weight initialisation, shared by the families: normal(0, std) for the layers that
read the residual stream, and the scaled std / sqrt(2 L) for those that write into it."""

from __future__ import annotations

import math

from torch import nn


def normal_init(std: float):
    return lambda weight: nn.init.normal_(weight, mean=0.0, std=std)


def output_init(config):
    """Megatron's scaled init for layers that write into the residual stream (`config` has
    `init_method_std` and `num_layers`)."""
    return normal_init(config.init_method_std / math.sqrt(2.0 * config.num_layers))
