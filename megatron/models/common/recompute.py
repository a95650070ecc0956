"""Activation checkpointing (`--checkpoint-activations`): a block's activations are dropped in the
forward pass and recomputed in the backward. The recomputation must draw the same dropout masks:
PyTorch restores the default generator; the tensor-parallel generator (`tp_random.py`) is restored
here, and put back afterwards so later layers keep their own draws."""

from __future__ import annotations

import torch.utils.checkpoint

from megatron.models.common.tp_random import tensor_parallel_rng


def checkpoint(function, *args):
    before = tensor_parallel_rng.get_states()
    forward_done = False

    def run(*inputs):
        nonlocal forward_done
        if not forward_done:
            forward_done = True
            return function(*inputs)
        after = tensor_parallel_rng.get_states()
        tensor_parallel_rng.set_states(before)
        try:
            return function(*inputs)
        finally:
            tensor_parallel_rng.set_states(after)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True)
