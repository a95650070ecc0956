"""The Llama family as layer specs for DeepSpeed's `PipelineModule`, numbered as
Megatron-DeepSpeed's GPTModelPipe (`state_dict_adapter`): a tied model's embedding and LM head are
one tied layer on the first and last stage (as BLOOM's); an untied model's LM head is a layer of
its own (`OutputEmbeddingPipe`, named so that `--pp-partition-method type:transformer|embedding`
counts it as the embedding is counted). What every family's pipeline shares (seeded specs, the
loss, the partition, the universal checkpoint info) is in `models/common/pipeline.py`.

Between stages flows `(hidden, segment_ids, is_inputs)` (the positions for RoPE come from the
segment ids in each block); the last layer hands the final hidden states and the LM head's
weight to the loss.
"""

from __future__ import annotations

import functools

import torch
from deepspeed.pipe import LayerSpec, TiedLayerSpec
from torch import nn

from megatron.models.common import pipeline as common
from megatron.models.common.norms import RMSNorm
from megatron.models.common.pipeline import (TIED_EMBEDDING, BlockPipe, EmbeddingPipe, FinalNormPipe, SeededLayerSpec,
                                             SeededTiedLayerSpec, pass_through, tied_lm_head)
from megatron.models.common.tp_random import layer_seed
from megatron.models.llama import state_dict_adapter
from megatron.models.llama.config import LlamaModelConfig
from megatron.models.llama.layers import LlamaBlock, LMHead, WordEmbeddings
from megatron.models.llama.state_dict_adapter import EMBEDDING_LAYER, FIRST_BLOCK_LAYER, lm_head_layer
from megatron.utils.megatron_core import ModelParallelConfig


class TransformerBlockPipe(BlockPipe, LlamaBlock):
    """Layers 3 .. L+2; named so that `--pp-partition-method type:transformer` finds them."""


class RMSNormPipe(FinalNormPipe, RMSNorm):
    """Layer L+4: the final RMSNorm (`weight`)."""


class OutputEmbeddingPipe(nn.Module):
    """Layer L+5 of an untied model: `lm_head.weight`, handed to the loss with the hidden states."""

    kind = "lm_head"

    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        self.lm_head = LMHead(config, parallel)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden, self.lm_head.weight


def llama_layer_specs(config: LlamaModelConfig, parallel: ModelParallelConfig, init_seed: int | None = None) -> list:
    """With `init_seed`, layer i is initialised from `layer_seed(init_seed, i)` (as `LlamaModel` is)."""
    blocks = range(FIRST_BLOCK_LAYER, FIRST_BLOCK_LAYER + config.num_layers)
    embedding_seed = layer_seed(init_seed, EMBEDDING_LAYER)
    if config.tie_word_embeddings:
        embedding = SeededTiedLayerSpec(embedding_seed, TIED_EMBEDDING, EmbeddingPipe, WordEmbeddings, config, parallel,
                                        tied_weight_attr="word_embeddings.weight")
        head = TiedLayerSpec(TIED_EMBEDDING, EmbeddingPipe, WordEmbeddings, config, parallel, forward_fn=tied_lm_head,
                             tied_weight_attr="word_embeddings.weight")
    else:
        embedding = SeededLayerSpec(embedding_seed, EmbeddingPipe, WordEmbeddings, config, parallel)
        head = SeededLayerSpec(layer_seed(init_seed, lm_head_layer(config.num_layers)), OutputEmbeddingPipe, config,
                               parallel)
    return [
        pass_through,
        embedding,
        pass_through,
        *(SeededLayerSpec(layer_seed(init_seed, layer), TransformerBlockPipe, config, parallel) for layer in blocks),
        pass_through,
        LayerSpec(RMSNormPipe, config.hidden_size, config.norm_eps, parallel.params_dtype),
        head,
    ]


# The whole model as a `PipelineModule` over megatron-core's groups (`common.pipeline_module`).
llama_pipeline = functools.partial(common.pipeline_module, llama_layer_specs, TransformerBlockPipe)
pipeline_parameter_shapes = functools.partial(common.pipeline_parameter_shapes, state_dict_adapter)
universal_checkpoint_info = functools.partial(common.universal_checkpoint_info, state_dict_adapter)
stage_layers = functools.partial(common.stage_layers, llama_layer_specs, state_dict_adapter)
check_partition = functools.partial(common.check_partition, llama_layer_specs, state_dict_adapter)
