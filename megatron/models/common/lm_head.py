"""The LM head tied to the word embeddings: logits of this tensor-parallel rank's vocabulary slice,
or of the whole padded vocabulary gathered across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.utils.megatron_core import parallel_state, tensor_parallel


class _GatherLastDim(torch.autograd.Function):
    """All-gather along the last dimension over the tensor-parallel group, on any device
    (megatron-core's own allocates on CUDA); the backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        group = parallel_state.get_tensor_model_parallel_group()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        ctx.rank, ctx.size = dist.get_rank(group), tensor.shape[-1]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[..., ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size].contiguous()


def lm_logits(hidden: torch.Tensor, embedding_weight: torch.Tensor, gather: bool) -> torch.Tensor:
    """Logits of the LM head tied to the embeddings: this rank's vocabulary slice, or (`gather`)
    the whole padded vocabulary."""
    hidden = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
    logits = F.linear(hidden, embedding_weight)
    if gather and parallel_state.get_tensor_model_parallel_world_size() > 1:
        return _GatherLastDim.apply(logits)
    return logits
