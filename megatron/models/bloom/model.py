"""The whole BLOOM as one module (pipeline size 1; with ZeRO-1/2/3): embeddings + embedding
LayerNorm, blocks, final LayerNorm, LM head tied to the embeddings, and its packed-batch loss
(`models/common/decoder.py`)."""

from __future__ import annotations

import torch

from megatron.models.bloom.config import BloomModelConfig
from megatron.models.bloom.layers import BloomBlock, WordEmbeddings, final_layernorm
from megatron.models.common.decoder import DecoderModel
from megatron.utils.megatron_core import ModelParallelConfig


class BloomModel(DecoderModel):
    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig,
                 checkpoint_activations: bool = False, init_seed: int | None = None):
        super().__init__(config, parallel, checkpoint_activations, init_seed, WordEmbeddings, BloomBlock,
                         final_layernorm)

    @property
    def head_weight(self) -> torch.Tensor:
        """The LM head is tied to the word embeddings."""
        return self.word_embeddings.weight
