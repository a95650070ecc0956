"""Code run inside spawned gloo processes by the model tests: our model at several
tensor-parallel sizes built from tiny HF BLOOMs (`tiny.py`) or our checkpoints, and what they
compute."""

from __future__ import annotations

import torch
from helpers.distributed import gloo_world
from helpers.parity import against_hf, build_from_hf, packed_batch  # noqa: F401  (packed_batch: the tests' packed row)
from helpers.tiny import VOCAB
from transformers import BloomForCausalLM

from megatron.checkpoint.hf_reader import HFCheckpoint
from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.loading import load_layers_into_model
from megatron.models import get_model_spec
from megatron.models.bloom.model import BloomModel
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel
from megatron.utils.megatron_core import parallel_state

SPEC = get_model_spec()
ADAPTER = SPEC.adapter

def build_ours(folder: str, tp_size: int) -> BloomModel:
    return build_from_hf(SPEC, folder, tp_size)


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
        results.update(against_hf(hf, lambda tp: build_ours(folder, tp), lambda m: zero_query(m, layer=1, head=0),
                                  ADAPTER, tokens, f"heads{heads}"))
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
