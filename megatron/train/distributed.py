"""The runtime of a run's processes, set up in one place: tensor/pipeline/data parallel groups
(megatron-core's `parallel_state`) with their collective timeouts, on CPU (gloo) or GPU (NCCL)
alike; the `mpu` adapter DeepSpeed takes; and the random generators: seeded as Megatron seeds them,
captured into and restored from checkpoints."""

from __future__ import annotations

import os
import random
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from megatron.models.common.tp_random import tensor_parallel_rng
from megatron.train.errors import ConfigError
from megatron.utils.megatron_core import parallel_state


def default_backend() -> str:
    """NCCL with CUDA, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def collective_device(group=None) -> str:
    """Where a tensor must live for a collective on `group`: NCCL takes CUDA tensors only."""
    return "cuda" if dist.get_backend(group) == "nccl" else "cpu"


def initialize_parallel(tp_size: int = 1, pp_size: int = 1, timeout: timedelta | None = None) -> None:
    """Create megatron-core's groups; torch.distributed is started first if it is not yet
    (`default_backend()`) from the usual torchrun environment variables. With `timeout`, every
    group created from now on (ours, megatron-core's, DeepSpeed's) waits at most that long in a
    collective: torch otherwise gives new groups its own default (30 minutes for gloo)."""
    if not dist.is_initialized():
        dist.init_process_group(default_backend(), timeout=timeout)
    if timeout is not None:
        c10d = dist.distributed_c10d
        c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    world = dist.get_world_size()
    if world % (tp_size * pp_size):
        raise ValueError(f"world size {world} is not divisible by tensor ({tp_size}) x pipeline ({pp_size}) "
                         "parallel sizes")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp_size, pipeline_model_parallel_size=pp_size,
        **({"distributed_timeout_minutes": timeout.total_seconds() / 60} if timeout else {}),
    )


def start_processes(tp_size: int, pp_size: int, backend: str | None, timeout_minutes: float,
                    world_size: int | None = None) -> None:
    """What a launched process does first: take its GPU (`LOCAL_RANK`), start torch.distributed
    through DeepSpeed (`backend`, or `default_backend()`) and megatron-core's groups, every
    collective bounded by `timeout_minutes`; with `world_size`, as many processes must have
    started."""
    import deepspeed  # here: the rest of this module (used by the benchmarks, tests) needs none of it

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(minutes=timeout_minutes)
    deepspeed.init_distributed(dist_backend=backend or default_backend(), timeout=timeout)
    if world_size is not None and dist.get_world_size() != world_size:
        raise ConfigError(f"the flags were checked for {world_size} processes but {dist.get_world_size()} started")
    initialize_parallel(tp_size, pp_size, timeout)


class DeepSpeedMPU:
    """The `mpu` DeepSpeed takes for a whole-model engine (no `PipelineModule`): megatron-core's
    groups under the names DeepSpeed asks for, so tensor-parallel ranks are not counted as
    data parallel."""

    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)


def seed_everything(seed: int, tp_rank: int = 0, pp_rank: int = 0) -> None:
    """Python, numpy and torch seeded as Megatron does (seed + 100 * pipeline rank), and the
    tensor-parallel generator (seed + 2718 + tensor rank)."""
    stage_seed = seed + 100 * pp_rank
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel_rng.seed(seed, tp_rank)


def rng_states() -> dict:
    """Every generator a run draws from, for its checkpoint."""
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
