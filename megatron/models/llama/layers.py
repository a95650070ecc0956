"""The Llama family's layers on megatron-core's tensor-parallel linear and embedding layers, named
as Megatron-DeepSpeed names a GPT block (`state_dict_adapter`):

- `WordEmbeddings`: `word_embeddings.weight` (vocab-parallel), no norm;
- `LlamaBlock`: `input_layernorm` (RMSNorm), `self_attention.query_key_value` (q, k, v fused per
  KV group), RoPE on q and k at each token's position within its pair, grouped-query attention
  through the shared backends, `self_attention.dense` (o_proj), `post_attention_layernorm`,
  `mlp.dense_h_to_4h` (this rank's gate and up, fused) and SwiGLU, `mlp.dense_4h_to_h`
  (down_proj);
- the final RMSNorm; the LM head is its own vocab-parallel weight (`LMHead`) or the embeddings'.

Activations are batch-first, `[batch, seq, hidden]`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from megatron.kernels.fused_bias import dropout_add, fused
from megatron.models.common.attention import get_backend
from megatron.models.common.extra_state import without_extra_state
from megatron.models.common.initializers import normal_init, output_init
from megatron.models.common.norms import RMSNorm
from megatron.models.common.rope import apply_rope, cos_sin, inverse_frequencies, positions_from_segments
from megatron.models.common.tp_random import tensor_parallel_rng
from megatron.models.llama.config import LlamaModelConfig
from megatron.utils.megatron_core import ModelParallelConfig, parallel_state, tensor_parallel


class WordEmbeddings(tensor_parallel.VocabParallelEmbedding):
    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig):
        super().__init__(config.vocab_size, config.hidden_size,
                         init_method=normal_init(config.init_method_std), config=parallel)
        without_extra_state(self)


class LMHead(nn.Module):
    """An untied LM head: `weight`, `[vocab / tp, hidden]`, this rank's vocabulary rows (the loss
    applies it: `models/common/loss.py`), marked tensor-parallel as megatron-core marks its own
    split weights (DeepSpeed's gradient norm counts replicated parameters on one TP rank only)."""

    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        self.weight = nn.Parameter(torch.empty(config.vocab_size // tp_size, config.hidden_size,
                                               dtype=parallel.params_dtype))
        # the whole matrix drawn from the seed, this rank's rows kept: the same model at any TP
        whole = torch.empty(config.vocab_size, config.hidden_size, dtype=parallel.params_dtype)
        normal_init(config.init_method_std)(whole)
        rank = parallel_state.get_tensor_model_parallel_rank()
        with torch.no_grad():
            self.weight.copy_(whole.chunk(tp_size)[rank])
        tensor_parallel.set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)


class Rotary:
    """The fp32 inverse frequencies, kept out of the module's buffers so that casting the model to
    bf16/fp16 never rounds them (one copy per device), and the cos/sin of a micro-batch's
    positions."""

    def __init__(self, config: LlamaModelConfig):
        self.inv_freq = {torch.device("cpu"): inverse_frequencies(config.head_dim, config.rope_theta,
                                                                  config.rope_scaling)}

    def __call__(self, segment_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        device = segment_ids.device
        if device not in self.inv_freq:
            self.inv_freq[device] = self.inv_freq[torch.device("cpu")].to(device)
        return cos_sin(positions_from_segments(segment_ids), self.inv_freq[device], dtype)


class SelfAttention(nn.Module):
    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        config.check_tensor_parallel(tp_size)
        self.local_groups = config.num_kv_heads // tp_size
        self.group_size = config.num_heads // config.num_kv_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_dropout
        self.backend = get_backend(config.attention_backend)
        self.prefix_lm = config.prefix_lm
        self.rotary = Rotary(config)
        qkv_size = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
        self.query_key_value = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, qkv_size, config=parallel, init_method=normal_init(config.init_method_std),
            bias=config.qkv_bias, gather_output=False,
        )
        self.dense = tensor_parallel.RowParallelLinear(
            config.num_heads * config.head_dim, config.hidden_size, config=parallel, init_method=output_init(config),
            bias=config.output_bias, input_is_parallel=True, skip_bias_add=False,
        )

    def forward(self, hidden: torch.Tensor, segment_ids: torch.Tensor, is_inputs: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        qkv, _ = self.query_key_value(hidden)
        qkv = qkv.view(batch, seq, self.local_groups, self.group_size + 2, self.head_dim)
        q = qkv[:, :, :, : self.group_size].reshape(batch, seq, -1, self.head_dim).transpose(1, 2)
        k, v = (qkv[:, :, :, i].transpose(1, 2) for i in (self.group_size, self.group_size + 1))
        cos, sin = self.rotary(segment_ids, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout_p = self.dropout_p if self.training else 0.0
        with tensor_parallel_rng.fork(hidden.device) if dropout_p > 0 else contextlib.nullcontext():
            context = self.backend(q, k, v.contiguous(), None, segment_ids, is_inputs if self.prefix_lm else None,
                                   dropout_p)
        context = context.transpose(1, 2).reshape(batch, seq, -1)
        output, _ = self.dense(context)
        return output


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up one column-parallel matrix whose rows on
    each rank are that rank's gate rows, then its up rows."""

    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        self.dense_h_to_4h = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, 2 * config.ffn_hidden_size, config=parallel,
            init_method=normal_init(config.init_method_std), bias=config.mlp_bias, gather_output=False,
        )
        self.dense_4h_to_h = tensor_parallel.RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, config=parallel, init_method=output_init(config),
            bias=config.mlp_bias, input_is_parallel=True, skip_bias_add=False,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(hidden)[0].chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)[0]


class LlamaBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), dropout on each branch."""

    def __init__(self, config: LlamaModelConfig, parallel: ModelParallelConfig):
        super().__init__()
        dtype = parallel.params_dtype
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps, dtype)
        self.self_attention = SelfAttention(config, parallel)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps, dtype)
        self.mlp = MLP(config, parallel)
        self.hidden_dropout = config.hidden_dropout
        self.dropout_add = fused(dropout_add) if config.bias_dropout_fusion else dropout_add
        without_extra_state(self)  # state dicts hold exactly the tensors of the adapter's table

    def forward(self, hidden: torch.Tensor, segment_ids: torch.Tensor, is_inputs: torch.Tensor | None = None) -> torch.Tensor:
        attention = self.self_attention(self.input_layernorm(hidden), segment_ids, is_inputs)
        hidden = self.dropout_add(attention, hidden, self.hidden_dropout, self.training)
        mlp = self.mlp(self.post_attention_layernorm(hidden))
        return self.dropout_add(mlp, hidden, self.hidden_dropout, self.training)


def final_norm(config: LlamaModelConfig, parallel: ModelParallelConfig) -> RMSNorm:
    return RMSNorm(config.hidden_size, config.norm_eps, parallel.params_dtype)
