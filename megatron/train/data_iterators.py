"""Micro-batches of packed rows for this data-parallel rank, resumable at any consumed-sample
count: the training samples are consumed in order, `micro x DP` at a time, rank r taking the
r-th `micro` of each (as Megatron's pretraining sampler), so a run resumed at `consumed_samples`
sees exactly the batches an uninterrupted run would. Validation restarts at its first sample at
every evaluation, so validation losses are comparable across evaluations."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from megatron.data.batch import collate


class MicroBatchSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch: int, dp_rank: int, dp_size: int):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch = micro_batch
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch * self.dp_size
        for start in range(self.consumed_samples, self.total_samples - step + 1, step):
            first = start + self.dp_rank * self.micro_batch
            yield list(range(first, first + self.micro_batch))

    def __len__(self) -> int:
        return max(0, (self.total_samples - self.consumed_samples) // (self.micro_batch * self.dp_size))


def micro_batches(dataset, consumed_samples: int, micro_batch: int, dp_rank: int, dp_size: int,
                  num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch, dp_rank, dp_size)
    # Its own generator: making an iterator draws a worker seed, which must not advance the
    # global generator that dropout uses (a resumed run makes its iterator at another point).
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))
    return iter(loader)


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A collated batch on `device`, as the whole-model engine takes it."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def pipeline_micro_batch(batch: dict[str, torch.Tensor]):
    """A collated batch as DeepSpeed's pipeline engine takes it: (first-stage inputs, loss inputs)."""
    return ((batch["tokens"], batch["segment_ids"], batch["is_inputs"]),
            (batch["labels"], batch["loss_mask"], batch["segment_ids"]))


class TargetTokenCounter:
    """Passes micro-batches through, counting their loss (target) tokens."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]]):
        self.batches = batches
        self.target_tokens = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.batches)
        self.target_tokens += int(batch["loss_mask"].sum())
        return batch

    def take(self) -> int:
        """The target tokens counted since the last call."""
        counted, self.target_tokens = self.target_tokens, 0
        return counted
