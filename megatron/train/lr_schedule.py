"""The learning rate as a function of consumed samples, as Megatron's scheduler computes it:
linear warmup from 0, then constant, linear or cosine decay from `--lr` to `--min-lr`, then
`--min-lr`. It advances by one global batch per applied optimizer step and is saved with the
checkpoint, so a resumed run continues the same curve."""

from __future__ import annotations

import math

from megatron.train.config import OptimizerConfig


class LRSchedule:
    def __init__(self, args: OptimizerConfig, global_batch: int):
        self.args = args
        self.global_batch = global_batch
        self.num_samples = 0

    def lr(self) -> float:
        args, n = self.args, self.num_samples
        if args.warmup_samples > 0 and n <= args.warmup_samples:
            return args.lr * n / args.warmup_samples
        if args.decay_style == "constant":
            return args.lr
        if n > args.decay_samples:
            return args.min_lr
        ratio = (n - args.warmup_samples) / max(1, args.decay_samples - args.warmup_samples)
        if args.decay_style == "linear":
            coefficient = 1.0 - ratio
        else:
            coefficient = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return args.min_lr + coefficient * (args.lr - args.min_lr)

    def apply(self, optimizer) -> float:
        """Set the current learning rate on every parameter group; returns it."""
        lr = self.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        self.num_samples += self.global_batch

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        self.num_samples = int(state["num_samples"])
