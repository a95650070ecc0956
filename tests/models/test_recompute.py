"""Activation recomputation (`--checkpoint-activations`) draws the same dropout masks as the plain
forward pass, in the default and in the tensor-parallel generator, so gradients are unchanged;
also with the compiled bias + dropout + residual, whose masks come from compiled code."""

from __future__ import annotations

import pytest
import torch
from helpers.bloom_workers import packed_batch
from helpers.distributed import gloo_world
from helpers.distributed import free_port

from megatron.models.bloom.model import BloomModel
from helpers.tiny import tiny_config
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel
from megatron.train.distributed import seed_everything


def _gradients(checkpoint_activations: bool, fusion: bool) -> dict[str, torch.Tensor]:
    config = tiny_config(hidden_dropout=0.3, attention_dropout=0.3, bias_gelu_fusion=fusion,
                         bias_dropout_fusion=fusion)
    model = BloomModel(config, model_parallel_config(), checkpoint_activations, init_seed=7).train()
    seed_everything(11)
    batch, _ = packed_batch()
    model.loss(batch).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("fusion", [False, True], ids=["reference", "compiled_bias_fusions"])
def test_recomputation_gives_the_gradients_of_the_plain_pass(fusion):
    with gloo_world(0, 1, free_port()):
        initialize_parallel(1, 1)
        plain, recomputed = _gradients(False, fusion), _gradients(True, fusion)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=0, msg=name)
