"""What the step benchmarks share: their one-process start, packed rows of xP3-like pairs, and a
timer that also reports peak memory (the GPU's allocator, or on Linux CPUs the process's
resident-set high-water mark, reset before measuring through `/proc/self/clear_refs`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from synthetic.corpus import xp3_like_pair_lengths
from megatron.train.distributed import initialize_parallel

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def start_one_process(default_port: int) -> str:
    """A one-process group (NCCL on a GPU, gloo on CPU; `MASTER_PORT` overrides the port), the
    device line printed; the device benchmarks run on."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", str(default_port)),
                      RANK="0", WORLD_SIZE="1")
    initialize_parallel(1, 1)
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; torch {torch.__version__}")
    return device


def packed_pairs(rows: int, seq: int, vocab: int, seed: int) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """`rows` packed rows of `seq + 1` tokens filled first-fit with xP3-like pairs (inputs cut to
    half a row), and those pairs' (input, target) lengths."""
    inputs, targets = xp3_like_pair_lengths(rows * seq, seed=seed)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (rows, seq + 1), generator=g)
    segments = torch.zeros(rows, seq + 1, dtype=torch.long)
    mask = torch.zeros(rows, seq + 1)
    pairs, k = [], 0
    for row in range(rows):
        used, segment, misses = 0, 1, 0
        while misses < 20:  # a pair that does not fit is passed over; 20 in a row close the row
            i, t = int(min(inputs[k], seq // 2)), int(max(1, min(targets[k], seq // 4)))
            k += 1
            if used + i + t > seq + 1:
                misses += 1
                continue
            segments[row, used:used + i + t] = segment
            mask[row, used + i - 1:used + i + t - 1] = 1  # predict the target tokens
            pairs.append((i, t))
            used, segment = used + i + t, segment + 1
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "segment_ids": segments[:, :-1],
             "loss_mask": mask[:, :-1]}
    return batch, pairs


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """Peak memory in GiB from `start()` to `read()`; with `above_start`, above what was in use
    at `start()`. NaN where it cannot be read (a CPU without Linux's /proc)."""

    def __init__(self, device: str, above_start: bool):
        self.device, self.above_start, self.start_bytes = device, above_start, 0

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            in_use = torch.cuda.memory_allocated()
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
            in_use = _status_bytes("VmRSS")
        else:
            self.start_bytes = None
            return
        self.start_bytes = in_use if self.above_start else 0

    def read(self) -> float:
        if self.start_bytes is None:
            return float("nan")
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else _status_bytes("VmHWM")
        return (peak - self.start_bytes) / 2**30


def timed(step, steps: int, device: str, warmup: int = 2, above_start: bool = False) -> tuple[float, float]:
    """Seconds per step (median after `warmup` steps) and peak memory in GiB during the timed
    steps (see `PeakMemory`)."""
    for _ in range(warmup):
        step()
    memory = PeakMemory(device, above_start)
    memory.start()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), memory.read()
