"""The whole BLOOM as one module (pipeline size 1; with ZeRO-1/2/3): embeddings + embedding
LayerNorm, blocks, final LayerNorm, LM head tied to the embeddings, and the packed-batch loss."""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn

from megatron.data.batch import loss_weights
from megatron.model.config import BloomModelConfig
from megatron.model.layers import BloomBlock, WordEmbeddings, final_layernorm, lm_logits


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy over the vocabulary, split across tensor-parallel ranks."""
    return tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)


class BloomModel(nn.Module):
    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = WordEmbeddings(config, parallel)
        self.layers = nn.ModuleList(BloomBlock(config, parallel) for _ in range(config.num_layers))
        self.final_layernorm = final_layernorm(config, parallel)

    def forward(
        self,
        tokens: torch.Tensor,
        segment_ids: torch.Tensor,
        is_inputs: torch.Tensor | None = None,
        gather_logits: bool = False,
    ) -> torch.Tensor:
        """Logits `[batch, seq, vocab / tp]` (or the whole padded vocabulary with `gather_logits`)."""
        hidden = self.word_embeddings(tokens)
        for layer in self.layers:
            hidden = layer(hidden, segment_ids, is_inputs)
        return lm_logits(self.final_layernorm(hidden), self.word_embeddings.weight, gather_logits)

    def loss(self, batch: dict[str, torch.Tensor], norm_target_loss: bool = False) -> torch.Tensor:
        logits = self(batch["tokens"], batch["segment_ids"], batch.get("is_inputs"))
        weights = loss_weights(batch["loss_mask"], batch["segment_ids"], norm_target_loss)
        return (token_losses(logits, batch["labels"]) * weights).sum()
