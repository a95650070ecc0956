"""Saving and restoring training checkpoints.

A save writes `SAVE/global_stepN/` (DeepSpeed's model, optimizer and per-rank RNG states; the
layer files `megatron_to_hf.py` reads; `progress.json` with the iteration, data position and LR
schedule) and last `manifest.json` (every file's size), then `bloom_config.json`, and only when
every rank is done, the `latest` pointer (and Megatron's `latest_checkpointed_iteration.txt`),
each by an atomic rename. A save interrupted part-way is therefore never the one `latest` names.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.model.checkpoint_layout import MODEL_CONFIG_FILE, layer_file, plain_name_to_layer
from megatron.model.hf_conversion import EXTRA_STATE, MegatronCheckpoint, load_layers_into_model, load_layers_into_pipeline
from megatron.model.random import tensor_parallel_rng
from megatron.data.atomic_files import write_atomically
from megatron.train.checkpoint_integrity import PROGRESS_FILE, write_manifest
from megatron.train.engine import TrainingEngine
from megatron.train.model_source import LoadPlan, Progress

MEGATRON_LATEST = "latest_checkpointed_iteration.txt"


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "tensor_parallel": tensor_parallel_rng.get_states()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    tensor_parallel_rng.set_states(states["tensor_parallel"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _write_whole_model_layers(engine: TrainingEngine, tag_dir: Path) -> None:
    """The whole-model path's layer files (the pipeline writes its own), so every checkpoint
    has the same layout for conversion and weights-only loading."""
    bloom = engine.bloom_module()
    zero3 = engine.train.parallel.zero_stage == 3
    with deepspeed.zero.GatheredParameters(list(bloom.parameters()), enabled=zero3):
        if parallel_state.get_data_parallel_rank() != 0:
            return
        layers: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in bloom.state_dict().items():
            if not name.endswith(EXTRA_STATE):
                layer, local = plain_name_to_layer(name, bloom.config.num_layers)
                layers.setdefault(layer, {})[local] = tensor.detach().cpu().clone()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        for layer, tensors in layers.items():
            torch.save(tensors, layer_file(tag_dir, layer, tp_rank))


def save_checkpoint(engine: TrainingEngine, save_dir: str, progress: Progress, meta: dict) -> Path:
    folder = Path(save_dir)
    tag = f"global_step{progress.iteration}"
    engine.engine.save_checkpoint(str(folder), tag=tag, client_state={"rng": rng_states()}, save_latest=False)
    if not engine.is_pipeline:
        _write_whole_model_layers(engine, folder / tag)
    dist.barrier()
    if dist.get_rank() == 0:
        write_atomically(folder / tag / PROGRESS_FILE, json.dumps(dataclasses.asdict(progress), indent=1))
        write_manifest(folder / tag)
        write_atomically(folder / MODEL_CONFIG_FILE, json.dumps(meta, indent=1))
        write_atomically(folder / "latest", tag)
        write_atomically(folder / MEGATRON_LATEST, str(progress.iteration))
    dist.barrier()
    return folder / tag


def load_weights(engine_module, plan: LoadPlan, is_pipeline: bool) -> None:
    """Weights only, from the layer files of the checkpoint `plan` names, at any TP/PP."""
    source = MegatronCheckpoint(plan.folder, plan.tag)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    if is_pipeline:
        load_layers_into_pipeline(engine_module, source.layer, tp_rank, tp_size)
    else:
        load_layers_into_model(engine_module.bloom, source.layer, tp_rank, tp_size)


def resume(engine: TrainingEngine, plan: LoadPlan, load_rng: bool) -> None:
    """Weights, optimizer and (with `load_rng`) RNG states of a training checkpoint."""
    path, client_state = engine.engine.load_checkpoint(
        str(plan.folder), tag=plan.tag, load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"--load {plan.folder}: DeepSpeed could not load {plan.tag}")
    if load_rng:
        set_rng_states(client_state["rng"])
