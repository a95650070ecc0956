"""What the model parity tests compute inside their gloo processes, for any family: our model at
TP=1 and TP=2 against a transformers model on the same tokens, on a packed row of three pairs
(`packed_batch`, which other model and kernel tests use too) against each pair alone, with one
query head zeroed, and loss and whole gradients at TP=2 against TP=1."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import dataclasses

from helpers.tiny import VOCAB

from megatron.checkpoint.hf_reader import HFCheckpoint
from megatron.checkpoint.loading import load_layers_into_model
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel
from megatron.utils.megatron_core import parallel_state


def packed_batch(seed: int = 1) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """One row holding three pairs (and padding): each pair's last two tokens are its targets
    (the loss predicts them), the tokens before them its inputs (`is_inputs`)."""
    g = torch.Generator().manual_seed(seed)
    spans = [(0, 7), (7, 16), (16, 21)]
    seq = 24
    tokens = torch.randint(4, VOCAB, (1, seq), generator=g)
    segments = torch.zeros(1, seq, dtype=torch.long)
    mask = torch.zeros(1, seq)
    is_inputs = torch.zeros(1, seq, dtype=torch.bool)
    for k, (a, b) in enumerate(spans, start=1):
        segments[0, a:b] = k
        mask[0, b - 3 : b - 1] = 1
        is_inputs[0, a : b - 2] = True
    labels = torch.roll(tokens, -1, dims=1)
    batch = {"tokens": tokens, "labels": labels, "segment_ids": segments, "loss_mask": mask, "is_inputs": is_inputs}
    return batch, spans


def build_from_hf(spec, folder: str, tp_size: int, **changes):
    """The family's whole model at TP `tp_size` (megatron-core's groups made for it) holding a HF
    folder's weights; `changes` to its config (a rope type, say)."""
    initialize_parallel(tp_size=tp_size)
    checkpoint = HFCheckpoint(folder, spec)
    config = checkpoint.model_config(tp_size)
    model = spec.build_model(dataclasses.replace(config, **changes), model_parallel_config())
    load_layers_into_model(model, lambda layer: checkpoint.layer(layer, config), spec.adapter,
                           parallel_state.get_tensor_model_parallel_rank(), tp_size)
    return model


def full_grads(model, adapter, tp_size: int) -> dict[str, torch.Tensor]:
    """Gradients of every parameter, gathered across tensor ranks into whole tensors by the
    family adapter's own merge (fused sub-tensors included)."""
    grads = {}
    group = parallel_state.get_tensor_model_parallel_group()
    for name, p in model.named_parameters():
        _, local = adapter.plain_name_to_layer(name, model.config.num_layers)
        parts = [p.grad.clone()] * tp_size
        if adapter.tp_split_dim(local) is not None and tp_size > 1:
            parts = [torch.empty_like(p.grad) for _ in range(tp_size)]
            dist.all_gather(parts, p.grad.contiguous(), group=group)
        grads[name] = adapter.merge_from_tp(local, parts, name)
    return grads


def against_hf(hf, build: Callable[[int], torch.nn.Module], zero_query: Callable, adapter, tokens: torch.Tensor,
               prefix: str) -> dict[str, float]:
    """`{prefix}_tp{1,2}_logits`, `_packed` and `_zeroed_query` (how far one head's query moves
    the logits), `{prefix}_loss_tp2_vs_tp1`, `_grad_tp2_vs_tp1` and `_grad_scale`; `build(tp)`
    gives our model at that TP, `zero_query(model)` zeroes one query head in it."""
    results = {}
    batch, spans = packed_batch()
    with torch.no_grad():
        hf_logits = hf(tokens).logits
        hf_pairs = [hf(batch["tokens"][:, a:b]).logits for a, b in spans]
    per_tp = {}
    for tp in (1, 2):
        model = build(tp)
        with torch.no_grad():
            logits = model(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
            packed = model(batch["tokens"], batch["segment_ids"], gather_logits=True)[..., :VOCAB]
        model.zero_grad()
        loss = model.loss(batch, norm_target_loss=True)
        loss.backward()
        per_tp[tp] = (loss.detach(), full_grads(model, adapter, tp))
        results[f"{prefix}_tp{tp}_logits"] = (logits - hf_logits).abs().max().item()
        results[f"{prefix}_tp{tp}_packed"] = max((packed[:, a:b] - ref).abs().max().item()
                                                 for (a, b), ref in zip(spans, hf_pairs))
        zero_query(model)  # how much one head's attention weighs in the logits
        with torch.no_grad():
            zeroed = model(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
        results[f"{prefix}_tp{tp}_zeroed_query"] = (zeroed - logits).abs().max().item()
    results[f"{prefix}_loss_tp2_vs_tp1"] = (per_tp[1][0] - per_tp[2][0]).abs().item()
    results[f"{prefix}_grad_tp2_vs_tp1"] = max((per_tp[1][1][n] - per_tp[2][1][n]).abs().max().item()
                                               for n in per_tp[1][1])
    results[f"{prefix}_grad_scale"] = max(g.abs().max().item() for g in per_tp[1][1].values())
    return results
