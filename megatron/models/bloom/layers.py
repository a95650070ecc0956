"""BLOOM's layers on megatron-core's tensor-parallel linear and embedding layers, named as in the
original Megatron-DeepSpeed BLOOM so its checkpoints map one to one:

- `WordEmbeddings`: `word_embeddings.weight` (vocab-parallel) and `word_embeddings.norm.{weight,bias}`
  (the embedding LayerNorm);
- `BloomBlock`: `input_layernorm`, `self_attention.query_key_value` (fused QKV, head-interleaved
  as HF stores it: per head q, k, v), `self_attention.dense`, `post_attention_layernorm`,
  `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`;
- the final LayerNorm (`weight`, `bias`); the LM head is the word embeddings' weight
  (`models/common/lm_head.py`).

Activations are batch-first, `[batch, seq, hidden]`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from megatron.kernels.fused_bias import bias_dropout_add, bias_gelu, fused
from megatron.models.bloom.config import BloomModelConfig
from megatron.models.common.alibi import alibi_slopes_for_rank
from megatron.models.common.attention import get_backend
from megatron.models.common.extra_state import without_extra_state
from megatron.models.common.initializers import normal_init, output_init
from megatron.models.common.tp_random import tensor_parallel_rng
from megatron.utils.megatron_core import ModelParallelConfig, parallel_state, tensor_parallel


class WordEmbeddings(tensor_parallel.VocabParallelEmbedding):
    """Vocab-parallel embedding followed by BLOOM's embedding LayerNorm (`.norm`)."""

    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__(config.vocab_size, config.hidden_size,
                         init_method=normal_init(config.init_method_std), config=parallel)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=parallel.params_dtype)
        without_extra_state(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(tokens))


class SelfAttention(nn.Module):
    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        config.check_tensor_parallel(tp_size)
        self.local_heads = config.num_heads // tp_size
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_dropout
        self.backend = get_backend(config.attention_backend)
        self.prefix_lm = config.prefix_lm
        self.query_key_value = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, 3 * config.hidden_size, config=parallel,
            init_method=normal_init(config.init_method_std), bias=True, gather_output=False,
        )
        self.dense = tensor_parallel.RowParallelLinear(
            config.hidden_size, config.hidden_size, config=parallel, init_method=output_init(config),
            bias=True, input_is_parallel=True, skip_bias_add=True,
        )
        slopes = alibi_slopes_for_rank(
            config.num_heads, parallel_state.get_tensor_model_parallel_rank(), tp_size
        )
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def forward(self, hidden: torch.Tensor, segment_ids: torch.Tensor,
                is_inputs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The output projection and its bias, not yet added (the block adds it with the dropout
        and the residual)."""
        batch, seq, _ = hidden.shape
        qkv, _ = self.query_key_value(hidden)
        qkv = qkv.view(batch, seq, self.local_heads, 3, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=3))
        dropout_p = self.dropout_p if self.training else 0.0
        with tensor_parallel_rng.fork(hidden.device) if dropout_p > 0 else contextlib.nullcontext():
            context = self.backend(q, k, v, self.alibi_slopes, segment_ids,
                                   is_inputs if self.prefix_lm else None, dropout_p)
        context = context.transpose(1, 2).reshape(batch, seq, self.local_heads * self.head_dim)
        return self.dense(context)


class MLP(nn.Module):
    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        self.dense_h_to_4h = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, 4 * config.hidden_size, config=parallel,
            init_method=normal_init(config.init_method_std), bias=True, gather_output=False,
            skip_bias_add=True,
        )
        self.dense_4h_to_h = tensor_parallel.RowParallelLinear(
            4 * config.hidden_size, config.hidden_size, config=parallel, init_method=output_init(config),
            bias=True, input_is_parallel=True, skip_bias_add=True,
        )
        self.bias_gelu = fused(bias_gelu) if config.bias_gelu_fusion else bias_gelu

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output projection and its bias, not yet added."""
        return self.dense_4h_to_h(self.bias_gelu(*self.dense_h_to_4h(hidden)))


class BloomBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)), dropout on each branch."""

    def __init__(self, config: BloomModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        dtype = parallel.params_dtype
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)
        self.self_attention = SelfAttention(config, parallel)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)
        self.mlp = MLP(config, parallel)
        self.hidden_dropout = config.hidden_dropout
        self.bias_dropout_add = fused(bias_dropout_add) if config.bias_dropout_fusion else bias_dropout_add
        without_extra_state(self)  # state dicts hold exactly Megatron-DeepSpeed's tensors

    def forward(self, hidden: torch.Tensor, segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None) -> torch.Tensor:
        attention, bias = self.self_attention(self.input_layernorm(hidden), segment_ids, is_inputs)
        hidden = self.bias_dropout_add(attention, bias, hidden, self.hidden_dropout, self.training)
        mlp, bias = self.mlp(self.post_attention_layernorm(hidden))
        return self.bias_dropout_add(mlp, bias, hidden, self.hidden_dropout, self.training)


def final_layernorm(config: BloomModelConfig, parallel: ModelParallelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=parallel.params_dtype)
