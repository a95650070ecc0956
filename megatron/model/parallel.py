"""Setting up tensor/pipeline/data parallel groups (megatron-core's `parallel_state`) and the
`ModelParallelConfig` its layers take, on CPU (gloo) or GPU (NCCL) alike."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig


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


def model_parallel_config(dtype: torch.dtype = torch.float32, device: str | None = None) -> ModelParallelConfig:
    """The config megatron-core's layers take: weights created on the CPU when running there
    (and initialised identically for any TP size from the same seed), in `dtype`."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return ModelParallelConfig(
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=device == "cpu",
        perform_initialization=True,
        gradient_accumulation_fusion=False,
        sequence_parallel=False,
    )


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
