"""BLOOM as layer specs for DeepSpeed's `PipelineModule`: the embedding and the LM head are tied
layers (one weight, kept in sync across the first and last stage), transformer blocks are the
partition units. Indices match Megatron-DeepSpeed's GPTModelPipe (`checkpoint_layout`), so
DeepSpeed's own `load_state_dir` reads its checkpoints and ours alike.

Between stages flows `(hidden, segment_ids, is_inputs)`; the first stage takes
`(tokens, segment_ids, is_inputs)` and the last returns this rank's vocabulary slice of logits.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, TiedLayerSpec
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn

from megatron.model.config import BloomModelConfig
from megatron.model.layers import BloomBlock, WordEmbeddings, lm_logits

TIED_EMBEDDING = "embed"


class EmbeddingPipe(nn.Module):
    """Layer 1 (and, tied, the LM head): `word_embeddings.weight`, `word_embeddings.norm.*`."""

    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        self.word_embeddings = WordEmbeddings(config, parallel)

    def forward(self, inputs):
        tokens, segment_ids, is_inputs = inputs
        return self.word_embeddings(tokens), segment_ids, is_inputs


def lm_head(embedding: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    return lm_logits(hidden, embedding.word_embeddings.weight, gather=False)


class BlockPipe(BloomBlock):
    def forward(self, inputs):
        hidden, segment_ids, is_inputs = inputs
        return super().forward(hidden, segment_ids, is_inputs), segment_ids, is_inputs


class FinalNormPipe(nn.LayerNorm):
    """Layer L+4: the final LayerNorm (`weight`, `bias`); passes on the hidden states only."""

    def forward(self, inputs):
        return super().forward(inputs[0])


def _pass_through(inputs):
    """The parameter-free layers 0, 2 and L+3 that keep Megatron-DeepSpeed's numbering."""
    return inputs


def bloom_layer_specs(config: BloomModelConfig, parallel: ModelParallelConfig) -> list:
    return [
        _pass_through,
        TiedLayerSpec(TIED_EMBEDDING, EmbeddingPipe, config, parallel, tied_weight_attr="word_embeddings.weight"),
        _pass_through,
        *(LayerSpec(BlockPipe, config, parallel) for _ in range(config.num_layers)),
        _pass_through,
        LayerSpec(FinalNormPipe, config.hidden_size, eps=config.layer_norm_eps, dtype=parallel.params_dtype),
        TiedLayerSpec(TIED_EMBEDDING, EmbeddingPipe, config, parallel, forward_fn=lm_head,
                      tied_weight_attr="word_embeddings.weight"),
    ]
