"""The `ModelParallelConfig` megatron-core's layers take, read from the process groups already set
up (`train/distributed.py` creates them)."""

from __future__ import annotations

import torch

from megatron.utils.megatron_core import ModelParallelConfig, parallel_state


def model_parallel_config(dtype: torch.dtype = torch.float32, device: str | None = None) -> ModelParallelConfig:
    """Weights created on the CPU when running there (and initialised identically for any TP
    size from the same seed), in `dtype`."""
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
