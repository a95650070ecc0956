"""What a family's whole model (pipeline size 1) does once its layers exist: embeddings, blocks
(recomputed under `--checkpoint-activations`), the final norm, and the LM head as logits, as the
packed-batch loss, or as zero-shot scores (`models/common/loss.py`). A family's model subclasses
`DecoderModel`, naming its embedding, block and final-norm builders, and says which weight its LM
head applies (`head_weight`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from megatron.models.common.layer_numbering import EMBEDDING_LAYER, block_layer
from megatron.models.common.lm_head import lm_logits
from megatron.models.common.loss import head_and_loss, target_log_probs
from megatron.models.common.recompute import checkpoint
from megatron.models.common.tp_random import layer_seed, seeded
from megatron.utils.megatron_core import ModelParallelConfig


class DecoderModel(nn.Module):
    def __init__(self, config, parallel: ModelParallelConfig, checkpoint_activations: bool, init_seed: int | None,
                 embeddings: Callable, block: Callable, final_norm: Callable):
        """Each of `embeddings`, `block` and `final_norm` is called with (config, parallel). With
        `init_seed`, each pipeline layer i is initialised from `init_seed + i`, as the pipeline's
        layer specs do: the same random model for any layout."""
        super().__init__()
        self.config = config
        self.checkpoint_activations = checkpoint_activations
        with seeded(layer_seed(init_seed, EMBEDDING_LAYER)):
            self.word_embeddings = embeddings(config, parallel)
        blocks = []
        for i in range(config.num_layers):
            with seeded(layer_seed(init_seed, block_layer(i))):
                blocks.append(block(config, parallel))
        self.layers = nn.ModuleList(blocks)
        self.final_layernorm = final_norm(config, parallel)

    @property
    def head_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None,
                gather_logits: bool = False) -> torch.Tensor:
        """Logits `[batch, seq, vocab / tp]` (or the whole padded vocabulary with `gather_logits`)."""
        return lm_logits(self.final_hidden(tokens, segment_ids, is_inputs), self.head_weight, gather_logits)

    def final_hidden(self, tokens: torch.Tensor, segment_ids: torch.Tensor,
                     is_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden states after the final norm, `[batch, seq, hidden]`."""
        hidden = self.word_embeddings(tokens)
        for layer in self.layers:
            if self.checkpoint_activations and self.training:
                hidden = checkpoint(layer, hidden, segment_ids, is_inputs)
            else:
                hidden = layer(hidden, segment_ids, is_inputs)
        return self.final_layernorm(hidden)

    def loss(self, batch: dict[str, torch.Tensor], norm_target_loss: bool = False) -> torch.Tensor:
        hidden = self.final_hidden(batch["tokens"], batch["segment_ids"], batch.get("is_inputs"))
        return head_and_loss(hidden, self.head_weight, batch["labels"], batch["loss_mask"], batch["segment_ids"],
                             norm_target_loss, self.config.lm_head_loss)

    def target_log_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each label's log-probability under the loss mask (`loss.target_log_probs`)."""
        hidden = self.final_hidden(batch["tokens"], batch["segment_ids"], batch.get("is_inputs"))
        return target_log_probs(hidden, self.head_weight, batch["labels"], batch["loss_mask"])
