"""Code run inside spawned gloo processes by the Llama-family model tests: our model at several
tensor-parallel sizes built from tiny HF Llama, Qwen2 and Mistral folders (`tiny_llama.py`), and
what it computes against transformers."""

from __future__ import annotations

import torch
from helpers.distributed import gloo_world
from helpers.parity import against_hf, build_from_hf
from helpers.tiny import VOCAB
from transformers import AutoModelForCausalLM

from megatron.models import get_model_spec
from megatron.utils.megatron_core import parallel_state

SPEC = get_model_spec("llama")
ADAPTER = SPEC.adapter


def build_ours(folder: str, tp_size: int, **changes):
    """Our model at TP `tp_size` from a HF folder; `changes` to its config (e.g. a rope type)."""
    return build_from_hf(SPEC, folder, tp_size, **changes)


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
    for kind, folder in folders.items():
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        results.update(against_hf(hf, lambda tp: build_ours(folder, tp), lambda m: zero_query(m, layer=1, head=1),
                                  ADAPTER, tokens, kind))
        if SPEC.config_class.from_hf(hf.config).rope_type == "llama3":  # the scaling matters here
            plain = build_ours(folder, 1, rope_type="default")
            with torch.no_grad():
                unscaled = plain(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
                reference = hf(tokens).logits
            results[f"{kind}_without_rope_scaling"] = (unscaled - reference).abs().max().item()
    return results
