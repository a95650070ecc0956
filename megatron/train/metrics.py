"""What the log line, TensorBoard and Weights & Biases report besides the loss: the devices' peak
FLOPs for MFU, memory, and the scalar writers (TensorBoard; W&B with Megatron-LM's `--wandb-*`
flags, the run's config recorded), one rank writing them all. Model FLOPs per token are the model family's
(`ModelSpec.flops_per_token`); MFU divides the achieved model FLOPs per device by the device's
dense peak for the training precision (known GPUs only).
"""

from __future__ import annotations

import resource

import torch

# Dense peak TFLOPs per device (bf16/fp16 tensor cores; fp32 means TF32).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}


def peak_tflops(precision: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peaks[precision] for model, peaks in PEAK_TFLOPS.items() if model in name), None)


def memory_gib() -> tuple[str, float]:
    """('gpu', peak allocated GiB) on a GPU, else ('rss', peak resident GiB of this process)."""
    if torch.cuda.is_available():
        return "gpu", torch.cuda.max_memory_allocated() / 2**30
    return "rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class TensorBoard:
    """Scalars on one rank (the last, which holds the loss), nothing elsewhere."""

    def __init__(self, folder: str | None, enabled: bool):
        self.writer = None
        if folder and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=folder)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandB:
    """Weights & Biases: the same scalars on the same rank, the run's `config` recorded (the
    `wandb` package, an extra; `WANDB_MODE=offline` writes the run without a network)."""

    def __init__(self, settings, enabled: bool, config: dict):
        self.run = None
        if settings is not None and enabled:
            import wandb

            self.run = wandb.init(project=settings.project, name=settings.exp_name, dir=settings.save_dir,
                                  entity=settings.entity, config=config)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({name: value for name, value in values.items() if value is not None}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


class ScalarLog:
    """Every scalar writer of the run behind one `scalars(values, step)`."""

    def __init__(self, *writers):
        self.writers = writers

    def scalars(self, values: dict[str, float], step: int) -> None:
        for writer in self.writers:
            writer.scalars(values, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
