"""BLOOM as layer specs for DeepSpeed's `PipelineModule`, and how DeepSpeed cuts them into stages.

The embedding and the LM head are tied layers (one weight, kept in sync across the first and
last stage), transformer blocks are the partition units. Indices match Megatron-DeepSpeed's
GPTModelPipe (`state_dict_adapter`), so DeepSpeed's own `load_state_dir` reads its checkpoints and
ours alike. What every family's pipeline shares (seeded specs, the loss, the partition, the
universal checkpoint info) is in `models/common/pipeline.py`.

Between stages flows `(hidden, segment_ids, is_inputs)`; the first stage takes
`(tokens, segment_ids, is_inputs)` and the last returns the final hidden states with the tied
head weight, which the loss turns into logits (or, chunked, into the loss directly).
"""

from __future__ import annotations

import functools

from deepspeed.pipe import LayerSpec, TiedLayerSpec
from torch import nn

from megatron.models.bloom import state_dict_adapter
from megatron.models.bloom.config import BloomModelConfig
from megatron.models.bloom.layers import BloomBlock, WordEmbeddings
from megatron.models.bloom.state_dict_adapter import EMBEDDING_LAYER, FIRST_BLOCK_LAYER
from megatron.models.common import pipeline as common
from megatron.models.common.pipeline import (TIED_EMBEDDING, BlockPipe, EmbeddingPipe, FinalNormPipe, SeededLayerSpec,
                                             SeededTiedLayerSpec, pass_through, tied_lm_head)
from megatron.models.common.tp_random import layer_seed
from megatron.utils.megatron_core import ModelParallelConfig


class TransformerBlockPipe(BlockPipe, BloomBlock):
    """Layers 3 .. L+2; named so that `--pp-partition-method type:transformer` finds them."""


class LayerNormPipe(FinalNormPipe, nn.LayerNorm):
    """Layer L+4: the final LayerNorm (`weight`, `bias`)."""


def bloom_layer_specs(config: BloomModelConfig, parallel: ModelParallelConfig, init_seed: int | None = None) -> list:
    """With `init_seed`, layer i is initialised from `layer_seed(init_seed, i)` (as `BloomModel` is)."""
    blocks = range(FIRST_BLOCK_LAYER, FIRST_BLOCK_LAYER + config.num_layers)
    return [
        pass_through,
        SeededTiedLayerSpec(layer_seed(init_seed, EMBEDDING_LAYER), TIED_EMBEDDING, EmbeddingPipe, WordEmbeddings,
                            config, parallel, tied_weight_attr="word_embeddings.weight"),
        pass_through,
        *(SeededLayerSpec(layer_seed(init_seed, layer), TransformerBlockPipe, config, parallel) for layer in blocks),
        pass_through,
        LayerSpec(LayerNormPipe, config.hidden_size, eps=config.layer_norm_eps, dtype=parallel.params_dtype),
        TiedLayerSpec(TIED_EMBEDDING, EmbeddingPipe, WordEmbeddings, config, parallel, forward_fn=tied_lm_head,
                      tied_weight_attr="word_embeddings.weight"),
    ]


# The whole BLOOM as a `PipelineModule` over megatron-core's groups (`common.pipeline_module`).
bloom_pipeline = functools.partial(common.pipeline_module, bloom_layer_specs, TransformerBlockPipe)
pipeline_parameter_shapes = functools.partial(common.pipeline_parameter_shapes, state_dict_adapter)
universal_checkpoint_info = functools.partial(common.universal_checkpoint_info, state_dict_adapter)
stage_layers = functools.partial(common.stage_layers, bloom_layer_specs, state_dict_adapter)
check_partition = functools.partial(common.check_partition, bloom_layer_specs, state_dict_adapter)
