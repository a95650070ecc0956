"""Activation recomputation (`--checkpoint-activations`) runs each transformer block's forward a
second time in the backward pass and draws the same dropout masks as the plain forward pass, in
the default and in the tensor-parallel generator, so gradients are unchanged; also with the
compiled bias + dropout + residual, whose masks come from compiled code that the recomputation
reuses without compiling again."""

from __future__ import annotations

import pytest
import torch
from helpers.bloom_workers import packed_batch
from helpers.compilation import compiled_frames, fresh_compilation
from helpers.distributed import free_port, gloo_world
from helpers.tiny import tiny_config

from megatron.models.bloom.model import BloomModel
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel, seed_everything


def _step(checkpoint_activations: bool, fusion: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One forward and backward pass: the gradients, and how many times each block's forward
    began (a recomputation stops once it has what the backward needs, so forward hooks, which
    run at a forward's end, would not see it)."""
    config = tiny_config(hidden_dropout=0.3, attention_dropout=0.3, bias_gelu_fusion=fusion,
                         bias_dropout_fusion=fusion)
    model = BloomModel(config, model_parallel_config(), checkpoint_activations, init_seed=7).train()
    forwards = [0] * len(model.layers)
    for i, block in enumerate(model.layers):
        block.register_forward_pre_hook(lambda module, args, i=i: forwards.__setitem__(i, forwards[i] + 1))
    seed_everything(11)
    batch, _ = packed_batch()
    model.loss(batch).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, forwards


@pytest.mark.parametrize("fusion", [False, True], ids=["reference", "compiled_bias_fusions"])
def test_recomputation_gives_the_gradients_of_the_plain_pass(fusion):
    """Each block's forward runs once per step, twice with recomputation (the forward, then again
    in the backward), and the gradients are bit-identical; compiled, the two fused functions are
    compiled once each, and not again for the recomputation."""
    fresh_compilation()
    with gloo_world(0, 1, free_port()):
        initialize_parallel(1, 1)
        plain, plain_forwards = _step(False, fusion)
        frames = compiled_frames()
        recomputed, recomputed_forwards = _step(True, fusion)
    assert plain_forwards == [1, 1] and recomputed_forwards == [2, 2]  # forward, and again in the backward
    # compiled: bias + GeLU and bias + dropout + residual, once each; nothing again when recomputing
    assert frames == (2 if fusion else 0) and compiled_frames() == frames
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=0, msg=name)
