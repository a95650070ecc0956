"""The LM head and its vocabulary-parallel cross entropy in one pass that never holds a
micro-batch's logits: `sum_t w[t] * CE(hidden[t] @ weight.T, label[t])`, the weight being this
tensor-parallel rank's vocabulary slice of the tied embedding.

- Only tokens with a non-zero loss weight are computed at all: with a targets-only loss that is
  the targets, a fraction of a packed row.
- Those tokens go through in chunks of at most `chunk_tokens`: a chunk's fp32 logits
  `[chunk, vocab / tp]` are the largest buffer, instead of `[micro x seq, vocab / tp]` fp32 logits
  plus their gradient.
- Gradients are computed in the forward pass, chunk by chunk (w * (softmax - one-hot), cast to
  the weight's dtype, times the weight or the hidden states; the weight's gradient accumulated
  across chunks in its own dtype), and only scaled, in place, in the backward. fp16 is the
  exception: there the loss scale comes only in the backward, and fp16 cannot hold the unscaled
  gradients (w * softmax is about 1e-9 for a 250k vocabulary, below fp16's 6e-8), so they are
  formed and accumulated in fp32 and cast to fp16 after scaling; the max, sum of exponentials
  and target logit are all-reduced over the tensor-parallel group as in Megatron's
  vocab-parallel cross entropy, and the hidden states' gradient once at the end.

Plain PyTorch: the same code runs on CPU, where tests compare it with the reference path
(`lm_logits` + `packed_loss`) at TP 1 and 2.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron.utils.megatron_core import parallel_state

CHUNK_BYTES = 2**30  # fp32 logits of one chunk: 1 GiB (about 1,000 tokens of a 250k vocabulary)


def _tensor_parallel_group():
    if not dist.is_initialized() or parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None
    return parallel_state.get_tensor_model_parallel_group()


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


class _LMHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, weights, vocab_start: int, chunk_tokens: int, group, with_grads: bool):
        vocab_local = weight.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_dtype = torch.float32 if weight.dtype == torch.float16 else weight.dtype
        grad_hidden = torch.zeros(hidden.shape, dtype=grad_dtype, device=hidden.device) if with_grads else None
        grad_weight = torch.zeros(weight.shape, dtype=grad_dtype, device=weight.device) if with_grads else None
        weight_for_grads = weight.to(grad_dtype) if with_grads else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, w = hidden[start:start + chunk_tokens], weights[start:start + chunk_tokens]
            local = labels[start:start + chunk_tokens] - vocab_start
            here = (local >= 0) & (local < vocab_local)
            local = torch.where(here, local, 0)
            logits = (h @ weight.t()).float()
            logits -= _all_reduce(logits.max(dim=-1).values, dist.ReduceOp.MAX, group)[:, None]
            target = _all_reduce(torch.where(here, logits.gather(1, local[:, None]).squeeze(1), 0.0),
                                 dist.ReduceOp.SUM, group)
            probabilities = logits.exp_()
            sum_exp = _all_reduce(probabilities.sum(dim=-1), dist.ReduceOp.SUM, group)
            total += ((sum_exp.log() - target) * w).sum()
            if with_grads:  # d loss / d logits = w * (softmax - one-hot)
                grad_logits = probabilities.mul_((w / sum_exp)[:, None])
                grad_logits[torch.arange(len(local), device=local.device), local] -= torch.where(here, w, 0.0)
                grad_logits = grad_logits.to(grad_dtype)
                grad_hidden[start:start + chunk_tokens] = grad_logits @ weight_for_grads
                grad_weight.addmm_(grad_logits.t(), h.to(grad_dtype))
        if with_grads:
            _all_reduce(grad_hidden, dist.ReduceOp.SUM, group)
        # kept on ctx, not saved for backward: the backward hands them over as the only reference
        ctx.grads = (grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise RuntimeError("lm_head_loss: a second backward pass through the same loss is not supported")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        # scaled in place (the loss scale, 1 / accumulation steps): a copy of the weight's gradient,
        # [vocab / tp, hidden], would double the largest buffer here; handed over without a
        # reference left, autograd can take it as the weight's .grad without copying either
        grad_hidden.mul_(grad_total)
        grad_weight.mul_(grad_total)
        hidden_dtype, weight_dtype = ctx.dtypes  # a cast only for fp16 (no copy otherwise)
        return grad_hidden.to(hidden_dtype), grad_weight.to(weight_dtype), None, None, None, None, None, None


def lm_head_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                 chunk_tokens: int | None = None) -> torch.Tensor:
    """`hidden [..., h]` (after the final LayerNorm, the same on every TP rank), `weight
    [vocab / tp, h]`, `labels [...]` (whole-vocabulary ids), `weights [...]` (loss weights):
    the weighted sum of the tokens' cross entropies, equal on every TP rank."""
    group = _tensor_parallel_group()
    vocab_start = weight.shape[0] * (parallel_state.get_tensor_model_parallel_rank() if group else 0)
    weights = weights.reshape(-1).to(device=hidden.device, dtype=torch.float32)
    counted = weights != 0
    hidden = hidden.reshape(-1, hidden.shape[-1])[counted]
    chunk = chunk_tokens or max(1, CHUNK_BYTES // (4 * weight.shape[0]))
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LMHeadLoss.apply(hidden, weight, labels.reshape(-1)[counted], weights[counted], vocab_start, chunk,
                             group, with_grads)
