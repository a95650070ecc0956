"""megatron-core, the one way this project imports it: its parallel state, tensor-parallel layers
and model-parallel config, without the Weights & Biases client that its inference engine and
timers import whenever the package is installed. Neither is used here (a run's own W&B logging,
`megatron/train/metrics.py`, imports the client when `--wandb-project` asks for it), and
importing it costs about 2 seconds of CPU in every process that starts (a third of importing
megatron-core)."""

from __future__ import annotations

import importlib
import sys


def _import_without_wandb() -> None:
    """Import megatron-core with `import wandb` failing for the time being, as where it is not
    installed; nothing changes when either is already imported."""
    if "megatron.core" in sys.modules or "wandb" in sys.modules:
        return
    sys.modules["wandb"] = None  # an import of it raises ImportError, which megatron-core expects
    try:
        importlib.import_module("megatron.core")
    finally:
        del sys.modules["wandb"]


_import_without_wandb()

from megatron.core import parallel_state, tensor_parallel  # noqa: E402
from megatron.core.model_parallel_config import ModelParallelConfig  # noqa: E402

__all__ = ["ModelParallelConfig", "parallel_state", "tensor_parallel"]
