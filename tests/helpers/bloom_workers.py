"""Code run inside spawned gloo processes by the model tests: our model at several
tensor-parallel sizes built from tiny HF BLOOMs (`tiny.py`) or our checkpoints, and what they
compute."""

from __future__ import annotations

import torch
import torch.distributed as dist
from helpers.distributed import gloo_world
from helpers.tiny import VOCAB
from megatron.core import parallel_state
from transformers import BloomForCausalLM

from megatron.checkpoint.hf_reader import HFCheckpoint
from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.loading import load_layers_into_model
from megatron.models import get_model_spec
from megatron.models.bloom.model import BloomModel
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel

SPEC = get_model_spec()
ADAPTER = SPEC.adapter

def build_ours(folder: str, tp_size: int) -> BloomModel:
    initialize_parallel(tp_size=tp_size)
    checkpoint = HFCheckpoint(folder, SPEC)
    config = checkpoint.model_config(tp_size)
    model = BloomModel(config, model_parallel_config())
    load_layers_into_model(model, lambda layer: checkpoint.layer(layer, config), ADAPTER,
                           parallel_state.get_tensor_model_parallel_rank(), tp_size)
    return model


def full_grads(model: BloomModel, tp_size: int) -> dict[str, torch.Tensor]:
    """Gradients of every parameter, gathered across tensor ranks into whole tensors."""
    grads = {}
    group = parallel_state.get_tensor_model_parallel_group()
    for name, p in model.named_parameters():
        _, local = ADAPTER.plain_name_to_layer(name, model.config.num_layers)
        dim = ADAPTER.tp_split_dim(local)
        if dim is None or tp_size == 1:
            grads[name] = p.grad.clone()
        else:
            parts = [torch.empty_like(p.grad) for _ in range(tp_size)]
            dist.all_gather(parts, p.grad.contiguous(), group=group)
            grads[name] = torch.cat(parts, dim=dim)
    return grads


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


def zero_query(model: BloomModel, layer: int, head: int) -> None:
    """Zero one head's query (its rows of the fused QKV weight and bias) in one block, on the
    tensor rank holding that head: the head's scores become 0, its attention ALiBi alone."""
    attention = model.layers[layer].self_attention
    heads = attention.local_heads
    if head // heads == parallel_state.get_tensor_model_parallel_rank():
        qkv = attention.query_key_value
        with torch.no_grad():
            qkv.weight.view(heads, 3, attention.head_dim, -1)[head % heads, 0] = 0
            qkv.bias.view(heads, 3, attention.head_dim)[head % heads, 0] = 0


def parity_worker(rank: int, world: int, port: int, folders: dict[int, str], out: str) -> None:
    with gloo_world(rank, world, port):
        results = parity_results(folders)
        if rank == 0:
            torch.save(results, out)


def parity_results(folders: dict[int, str]) -> dict[str, float]:
    results = {}
    torch.manual_seed(123)
    tokens = torch.randint(0, VOCAB, (2, 16))
    for heads, folder in folders.items():
        hf = BloomForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        with torch.no_grad():
            hf_logits = hf(tokens).logits
        batch, spans = packed_batch()
        with torch.no_grad():
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
            results[f"heads{heads}_tp{tp}_logits"] = (logits - hf_logits).abs().max().item()
            results[f"heads{heads}_tp{tp}_packed"] = max(
                (packed[:, a:b] - ref).abs().max().item() for (a, b), ref in zip(spans, hf_pairs)
            )
            zero_query(model, layer=1, head=0)  # how much one head's attention weighs in the logits
            with torch.no_grad():
                zeroed = model(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
            results[f"heads{heads}_tp{tp}_zeroed_query"] = (zeroed - logits).abs().max().item()
        results[f"heads{heads}_loss_tp2_vs_tp1"] = (per_tp[1][0] - per_tp[2][0]).abs().item()
        results[f"heads{heads}_grad_tp2_vs_tp1"] = max(
            (per_tp[1][1][n] - per_tp[2][1][n]).abs().max().item() for n in per_tp[1][1]
        )
        results[f"heads{heads}_grad_scale"] = max(g.abs().max().item() for g in per_tp[1][1].values())
    return results


def checkpoint_logits_worker(rank: int, world: int, port: int, checkpoint: str, out: str) -> None:
    """Our model at TP=world loaded from one of our checkpoints: its gathered logits."""
    with gloo_world(rank, world, port):
        initialize_parallel(tp_size=world)
        source = CheckpointReader(checkpoint, SPEC)
        model = BloomModel(source.config, model_parallel_config())
        load_layers_into_model(model, source.layer, ADAPTER, parallel_state.get_tensor_model_parallel_rank(), world)
        torch.manual_seed(5)
        tokens = torch.randint(0, VOCAB, (2, 12))
        with torch.no_grad():
            logits = model(tokens, torch.ones_like(tokens), gather_logits=True)[..., :VOCAB]
        if rank == 0:
            torch.save({"tokens": tokens, "logits": logits}, out)


def pipeline_load_worker(rank: int, world: int, port: int, checkpoint: str, hf_folder: str, out: str) -> None:
    """TP=2 x PP=2: DeepSpeed's PipelineModule built from our layer specs loads one of our
    checkpoints with its own `load_state_dir`; each rank reports how far its parameters are
    from the HF tensors they come from."""
    import deepspeed
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    from megatron.models.bloom.pipeline import bloom_layer_specs

    with gloo_world(rank, world, port, through_deepspeed=True):
        initialize_parallel(tp_size=2, pp_size=2)
        source = CheckpointReader(checkpoint, SPEC)
        topology = PipeModelDataParallelTopology(num_pp=2, num_mp=2, num_dp=1)
        module = deepspeed.PipelineModule(layers=bloom_layer_specs(source.config, model_parallel_config()),
                                          topology=topology, partition_method="type:transformer")
        module.load_state_dir(str(source.tag_dir), TorchCheckpointEngine())
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        hf = HFCheckpoint(hf_folder, SPEC)
        expected = {
            (layer, local): ADAPTER.split_for_tp(local, tensor, 2)[tp_rank]
            for layer in ADAPTER.parameter_layers(source.config.num_layers)
            for local, tensor in hf.layer(layer, source.config).items()
        }
        report = {"stage": parallel_state.get_pipeline_model_parallel_rank(), "layers": [], "max_error": 0.0}
        first = int(module.partitions()[module.stage_id])
        for index, layer in enumerate(module.forward_funcs):
            if isinstance(layer, torch.nn.Module):  # the tied embedding included
                global_index = first + index
                report["layers"].append(global_index)
                for local, p in layer.state_dict().items():  # tensors only (no `_extra_state`)
                    error = (p - expected[(global_index, local)]).abs().max().item()
                    report["max_error"] = max(report["max_error"], error)
        # the tied embedding / LM head weight, on both stages (the last gets it from the first)
        tied = module.tied_modules["embed"].word_embeddings.weight
        report["tied_error"] = (tied - expected[(1, "word_embeddings.weight")]).abs().max().item()
        torch.save(report, f"{out}.{rank}")
