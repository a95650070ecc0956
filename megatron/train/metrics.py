"""What the log line and TensorBoard report: throughput, model FLOPs and MFU, memory.

Model FLOPs per token (Narayanan et al. 2021, without recomputation, full causal attention over
the row): `72 * l * h^2 * (1 + s / (6 h) + V / (12 l h))` for l layers, hidden size h, row
length s and padded vocabulary V; i.e. 6 x parameters of the matmuls, plus attention scores and
values, plus the LM head, for forward and backward. MFU divides the achieved model FLOPs per
device by the device's dense peak for the training precision (known GPUs only).
"""

from __future__ import annotations

import resource

import torch

from megatron.model.config import BloomModelConfig

FLOPS_FORMULA = "72*l*h^2*(1 + s/(6h) + V/(12*l*h)) per token"

# Dense peak TFLOPs per device (bf16/fp16 tensor cores; fp32 means TF32).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}


def model_flops_per_token(config: BloomModelConfig, seq_length: int) -> float:
    l, h, v = config.num_layers, config.hidden_size, config.vocab_size
    return 72.0 * l * h * h * (1.0 + seq_length / (6.0 * h) + v / (12.0 * l * h))


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
