"""The model on DeepSpeed: a `PipelineModule` (1F1B, tied embedding/LM head) for ZeRO stage 0/1 at
any pipeline size, as Megatron-DeepSpeed ran BLOOM; the whole model (`BloomModel`) for ZeRO-2/3,
which DeepSpeed's pipeline engine does not support. Both take the same micro-batches and give the
same losses; `TrainingEngine` hides which one runs."""

from __future__ import annotations

from collections.abc import Iterator

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import nn

from megatron.model.bloom import BloomModel
from megatron.model.config import BloomModelConfig
from megatron.model.parallel import DeepSpeedMPU, collective_device, model_parallel_config
from megatron.model.pipeline import bloom_pipeline
from megatron.train.arguments import OptimizerArgs, TrainConfig
from megatron.train.data_iterators import pipeline_micro_batch
from megatron.train.deepspeed_config import deepspeed_config


class BloomForTraining(nn.Module):
    """The whole model with its loss as `forward`, for DeepSpeed's plain engine."""

    def __init__(self, bloom: BloomModel, norm_target_loss: bool):
        super().__init__()
        self.bloom = bloom
        self.norm_target_loss = norm_target_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.bloom.loss(batch, self.norm_target_loss)


def adamw(module: nn.Module, args: OptimizerArgs) -> torch.optim.Optimizer:
    """Megatron's Adam: decoupled weight decay on matrices, none on biases and LayerNorms."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                             fused=torch.cuda.is_available())


def build_module(train: TrainConfig, config: BloomModelConfig) -> nn.Module:
    """Randomly initialised (identically for any layout, from `--seed`) on this rank."""
    parallel = model_parallel_config(torch.float32, device="cpu")
    if train.parallel.uses_pipeline:
        return bloom_pipeline(config, parallel, train.parallel.data, train.parallel.partition_method,
                              train.model.checkpoint_activations, train.norm_target_loss, init_seed=train.seed)
    bloom = BloomModel(config, parallel, train.model.checkpoint_activations, init_seed=train.seed)
    return BloomForTraining(bloom, train.norm_target_loss)


class TrainingEngine:
    def __init__(self, train: TrainConfig, module: nn.Module):
        self.train = train
        self.is_pipeline = train.parallel.uses_pipeline
        self.engine, *_ = deepspeed.initialize(
            model=module, optimizer=adamw(module, train.optimizer), config=deepspeed_config(train),
            mpu=None if self.is_pipeline else DeepSpeedMPU(),
        )
        stage = parallel_state.get_pipeline_model_parallel_rank()
        last = parallel_state.get_pipeline_model_parallel_world_size() - 1
        self.loads_data = not self.is_pipeline or stage in (0, last)
        # one rank per data-parallel replica counts the target tokens of what it trains on
        self.counts_tokens = stage == last and parallel_state.get_tensor_model_parallel_rank() == 0

    @property
    def optimizer(self):
        return self.engine.optimizer

    def train_step(self, batches: Iterator | None) -> tuple[float, bool]:
        """One global batch (gradient accumulation included): its mean loss, and whether the
        optimizer step was applied (DeepSpeed skips it on non-finite gradients)."""
        self.engine.train()
        if self.is_pipeline:
            loss = self.engine.train_batch(map(pipeline_micro_batch, batches) if batches else None)
        else:
            total = torch.zeros((), dtype=torch.float32)
            for _ in range(self.train.batch.gradient_accumulation):
                micro_loss = self.engine(self._to_device(next(batches)))
                self.engine.backward(micro_loss)
                self.engine.step()
                total += micro_loss.detach().float().cpu()
            loss = self._data_parallel_mean(total / self.train.batch.gradient_accumulation)
        return float(loss), bool(self.engine.was_step_applied())

    @torch.no_grad()
    def eval_step(self, batches: Iterator | None) -> float:
        self.engine.eval()
        if self.is_pipeline:
            return float(self.engine.eval_batch(map(pipeline_micro_batch, batches) if batches else None))
        total = torch.zeros((), dtype=torch.float32)
        for _ in range(self.train.batch.gradient_accumulation):
            total += self.engine(self._to_device(next(batches))).float().cpu()
        return float(self._data_parallel_mean(total / self.train.batch.gradient_accumulation))

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def bloom_module(self) -> BloomModel | None:
        """The whole-model path's `BloomModel` (None for the pipeline)."""
        return None if self.is_pipeline else self.engine.module.bloom

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.engine.device, non_blocking=True) for k, v in batch.items()}

    @staticmethod
    def _data_parallel_mean(value: torch.Tensor) -> torch.Tensor:
        group = parallel_state.get_data_parallel_group()
        value = value.to(collective_device(group))
        dist.all_reduce(value, group=group)
        return value.cpu() / dist.get_world_size(group)
