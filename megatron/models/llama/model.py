"""The whole Llama-family model as one module (pipeline size 1; with ZeRO-1/2/3): embeddings,
blocks, final RMSNorm, the LM head (its own weight, or tied to the embeddings), and its
packed-batch loss (`models/common/decoder.py`)."""

from __future__ import annotations

import torch

from megatron.models.common.decoder import DecoderModel
from megatron.models.common.tp_random import layer_seed, seeded
from megatron.models.llama.config import LlamaModelConfig
from megatron.models.llama.layers import LlamaBlock, LMHead, WordEmbeddings, final_norm
from megatron.models.llama.state_dict_adapter import lm_head_layer
from megatron.utils.megatron_core import ModelParallelConfig


class LlamaModel(DecoderModel):
    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig,
                 checkpoint_activations: bool = False, init_seed: int | None = None):
        super().__init__(config, parallel, checkpoint_activations, init_seed, WordEmbeddings, LlamaBlock, final_norm)
        if not config.tie_word_embeddings:
            with seeded(layer_seed(init_seed, lm_head_layer(config.num_layers))):
                self.lm_head = LMHead(config, parallel)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.word_embeddings.weight if self.config.tie_word_embeddings else self.lm_head.weight
