"""Code run inside spawned gloo processes by the Llama-family model tests: our model at several
tensor-parallel sizes built from tiny HF Llama, Qwen2 and Mistral folders (`tiny_llama.py`), and
what it computes against transformers."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from helpers.bloom_workers import packed_batch
from helpers.distributed import gloo_world
from helpers.tiny import VOCAB
from megatron.core import parallel_state
from transformers import AutoModelForCausalLM

from megatron.checkpoint.hf_reader import HFCheckpoint
from megatron.checkpoint.loading import load_layers_into_model
from megatron.models import get_model_spec
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel

SPEC = get_model_spec("llama")
ADAPTER = SPEC.adapter


def build_ours(folder: str, tp_size: int, **changes):
    """Our model at TP `tp_size` from a HF folder; `changes` to its config (e.g. a rope type)."""
    initialize_parallel(tp_size=tp_size)
    checkpoint = HFCheckpoint(folder, SPEC)
    config = checkpoint.model_config(tp_size)
    model = SPEC.build_model(dataclasses.replace(config, **changes), model_parallel_config())
    load_layers_into_model(model, lambda layer: checkpoint.layer(layer, config), ADAPTER,
                           parallel_state.get_tensor_model_parallel_rank(), tp_size)
    return model


def full_grads(model, tp_size: int) -> dict[str, torch.Tensor]:
    """Gradients of every parameter, gathered across tensor ranks into whole tensors (the
    adapter's own merge: fused gate/up per rank included)."""
    grads = {}
    group = parallel_state.get_tensor_model_parallel_group()
    for name, p in model.named_parameters():
        _, local = ADAPTER.plain_name_to_layer(name, model.config.num_layers)
        parts = [p.grad.clone()]
        if ADAPTER.tp_split_dim(local) is not None and tp_size > 1:
            parts = [torch.empty_like(p.grad) for _ in range(tp_size)]
            dist.all_gather(parts, p.grad.contiguous(), group=group)
        grads[name] = ADAPTER.merge_from_tp(local, parts * (tp_size if len(parts) == 1 else 1), name)
    return grads


def zero_query(model, layer: int, head: int) -> None:
    """Zero one query head's rows of the fused QKV weight in one block, on the rank holding it."""
    attention = model.layers[layer].self_attention
    per_rank = attention.local_groups * attention.group_size
    if head // per_rank == parallel_state.get_tensor_model_parallel_rank():
        local = head % per_rank
        group, index = divmod(local, attention.group_size)
        weight = attention.query_key_value.weight.view(attention.local_groups, attention.group_size + 2,
                                                       attention.head_dim, -1)
        with torch.no_grad():
            weight[group, index] = 0


def parity_worker(rank: int, world: int, port: int, folders: dict[str, str], out: str) -> None:
    with gloo_world(rank, world, port):
        results = parity_results(folders)
        if rank == 0:
            torch.save(results, out)


def parity_results(folders: dict[str, str]) -> dict[str, float]:
    results = {}
    torch.manual_seed(123)
    tokens = torch.randint(0, VOCAB, (2, 24))
    batch, spans = packed_batch()
    for kind, folder in folders.items():
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        with torch.no_grad():
            hf_logits = hf(tokens).logits
            hf_pairs = [hf(batch["tokens"][:, a:b]).logits for a, b in spans]
        per_tp = {}
        for tp in (1, 2):
            model = build_ours(folder, tp)
            with torch.no_grad():
                logits = model(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
                packed = model(batch["tokens"], batch["segment_ids"], gather_logits=True)[..., :VOCAB]
            model.zero_grad()
            loss = model.loss(batch, norm_target_loss=True)
            loss.backward()
            per_tp[tp] = (loss.detach(), full_grads(model, tp))
            results[f"{kind}_tp{tp}_logits"] = (logits - hf_logits).abs().max().item()
            results[f"{kind}_tp{tp}_packed"] = max((packed[:, a:b] - ref).abs().max().item()
                                                   for (a, b), ref in zip(spans, hf_pairs))
            zero_query(model, layer=1, head=1)
            with torch.no_grad():
                zeroed = model(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
            results[f"{kind}_tp{tp}_zeroed_query"] = (zeroed - logits).abs().max().item()
        results[f"{kind}_loss_tp2_vs_tp1"] = (per_tp[1][0] - per_tp[2][0]).abs().item()
        results[f"{kind}_grad_tp2_vs_tp1"] = max((per_tp[1][1][n] - per_tp[2][1][n]).abs().max().item()
                                                 for n in per_tp[1][1])
        results[f"{kind}_grad_scale"] = max(g.abs().max().item() for g in per_tp[1][1].values())
        if SPEC.config_class.from_hf(hf.config).rope_type == "llama3":  # the scaling matters here
            plain = build_ours(folder, 1, rope_type="default")
            with torch.no_grad():
                unscaled = plain(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
            results[f"{kind}_without_rope_scaling"] = (unscaled - hf_logits).abs().max().item()
    return results
