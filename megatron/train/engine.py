"""The model on DeepSpeed: a `PipelineModule` (1F1B, tied embedding/LM head) for ZeRO stage 0/1 at
any pipeline size, as Megatron-DeepSpeed ran BLOOM; the whole model for ZeRO-2/3, which
DeepSpeed's pipeline engine does not support. Both take the same micro-batches and give the same
losses; `TrainingEngine` hides which one runs, and owns what touches the DeepSpeed engine: steps,
gradient norms, saving and loading its state, and the model's weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from megatron.checkpoint.layer_files import save_model_layers
from megatron.checkpoint.loading import LayerSource, load_layers_into_model, load_layers_into_pipeline, stage_modules
from megatron.models.common import lora
from megatron.models.common.layer_numbering import block_layer
from megatron.models.common.parallel_config import model_parallel_config
from megatron.models.spec import ModelSpec
from megatron.train.config import OptimizerConfig, TrainConfig
from megatron.train.data_iterators import pipeline_micro_batch, to_device
from megatron.train.deepspeed_config import deepspeed_config
from megatron.train.distributed import DeepSpeedMPU, collective_device
from megatron.train.task_eval import ZeroShotTasks, score_pairs
from megatron.utils.megatron_core import parallel_state


class ModelWithLoss(nn.Module):
    """The whole model with its loss as `forward`, for DeepSpeed's plain engine; with `score`,
    each label's log-probability under the loss mask instead (zero-shot evaluation)."""

    def __init__(self, model: nn.Module, norm_target_loss: bool):
        super().__init__()
        self.model = model
        self.norm_target_loss = norm_target_loss

    def forward(self, batch: dict[str, torch.Tensor], score: bool = False) -> torch.Tensor:
        if score:
            return self.model.target_log_probs(batch)
        return self.model.loss(batch, self.norm_target_loss)


def adamw(module: nn.Module, args: OptimizerConfig) -> torch.optim.Optimizer:
    """Megatron's Adam: decoupled weight decay on matrices, none on biases and LayerNorms; the
    trainable parameters only (with LoRA, the adapters)."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                             fused=torch.cuda.is_available())


def build_module(train: TrainConfig, spec: ModelSpec, config) -> nn.Module:
    """Randomly initialised (identically for any layout, from `--seed`) on this rank. The
    pipeline carries DeepSpeed's `universal_checkpoint_info`, which every save then writes, so
    any of its checkpoints converts to a universal one."""
    parallel = model_parallel_config(torch.float32, device="cpu")
    if train.parallel.uses_pipeline:
        module = spec.build_pipeline(config, parallel, train.parallel.data, train.parallel.partition_method,
                                     train.model.checkpoint_activations, train.norm_target_loss, init_seed=train.seed)
        module.universal_checkpoint_info = spec.universal_checkpoint_info(config)
        return module
    model = spec.build_model(config, parallel, train.model.checkpoint_activations, init_seed=train.seed)
    return ModelWithLoss(model, train.norm_target_loss)


def load_weights(module: nn.Module, spec: ModelSpec, layers: LayerSource, is_pipeline: bool,
                 adapters_only: bool = False) -> None:
    """Whole layers (`layers(index)`) into a module from `build_module`, before the engine exists;
    with `adapters_only`, the LoRA adapters `add_adapters` made."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    if is_pipeline:
        load_layers_into_pipeline(module, layers, spec.adapter, tp_rank, tp_size, adapters_only)
    else:
        load_layers_into_model(module.model, layers, spec.adapter, tp_rank, tp_size, adapters_only)


ADAPTERLESS_STAGE = "adapterless_stage"


def _outputs_require_grad(module: nn.Module, args, outputs):
    """On a first pipeline stage without adapters (the embedding alone), its activations are
    leaves that DeepSpeed's backward still runs through: make them differentiable leaves (later
    stages receive theirs differentiable)."""
    if torch.is_grad_enabled():
        for tensor in outputs if isinstance(outputs, tuple) else (outputs,):
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.requires_grad \
                    and not isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(True)
    return outputs


def add_adapters(module: nn.Module, spec: ModelSpec, config, lora_config: lora.LoraConfig, seed: int,
                 is_pipeline: bool) -> None:
    """LoRA on the targeted linear layers of every block of this rank's module from `build_module`
    (the family's model `config`), the rest frozen (`models/common/lora.py`)."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()

    def fused_rows(path: str):
        found = spec.adapter.lora_fused_rows(path, config)
        if found is None:
            return None
        names, rows = found  # each whole output row's part, split over TP as the adapter's B rows are
        return names, lora.split_for_tp(spec.adapter, f"{path}.{lora.LORA_B}.weight", rows[:, None], tp_size)[tp_rank][:, 0]

    if is_pipeline:
        layers = list(stage_modules(module))
    else:
        layers = [(block_layer(i), block) for i, block in enumerate(module.model.layers)]
    attached = sum(len(lora.attach(layer_module, lora_config, layer, seed, tp_rank, tp_size, fused_rows))
                   for layer, layer_module in layers)
    lora.freeze_all_but_adapters(module)
    if is_pipeline and not attached:
        if parallel_state.get_pipeline_model_parallel_rank() == 0:
            module.register_forward_hook(_outputs_require_grad)
        # DeepSpeed's ZeRO optimizer needs a parameter on every stage (deepspeedai/DeepSpeed#5071):
        # one that no layer uses, so its gradient and its Adam update are zero
        module.register_parameter(ADAPTERLESS_STAGE, nn.Parameter(torch.zeros(1)))


class TrainingEngine:
    def __init__(self, train: TrainConfig, spec: ModelSpec, module: nn.Module, load_universal: bool = False):
        """With `load_universal`, `load` reads a universal checkpoint (DeepSpeed's
        `checkpoint.load_universal`)."""
        self.train = train
        self.spec = spec
        self.is_pipeline = train.parallel.uses_pipeline
        self.adapters_only = train.lora is not None  # LoRA: checkpoints hold the adapters alone
        config = deepspeed_config(train)
        config.setdefault("checkpoint", {})["load_universal"] = load_universal  # not a JSON's say
        self.engine, *_ = deepspeed.initialize(
            model=module, optimizer=adamw(module, train.optimizer), config=config,
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
                micro_loss = self.engine(to_device(next(batches), self.engine.device))
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
            total += self.engine(to_device(next(batches), self.engine.device)).float().cpu()
        return float(self._data_parallel_mean(total / self.train.batch.gradient_accumulation))

    def score(self, tasks: ZeroShotTasks) -> np.ndarray:
        """Every (inputs, choice) pair's summed log-probability, on every rank."""
        return score_pairs(self.engine, tasks.rows, self.train.batch.micro)

    def loss_scale(self) -> tuple[float, float | None] | None:
        """With fp16: DeepSpeed's current loss scale and the minimum its dynamic scaler may reach
        (None for a static scale); None in bf16 and fp32. ZeRO's optimizers keep them in their
        `loss_scaler`, the ZeRO-0 FP16 optimizer in its `loss_scale_config`."""
        if self.train.precision != "fp16":
            return None
        optimizer = self.engine.optimizer
        scaler = getattr(optimizer, "loss_scaler", None)
        if scaler is not None:
            return float(scaler.cur_scale), getattr(scaler, "min_scale", None)
        config = optimizer.loss_scale_config
        return float(config.cur_scale), config.min_loss_scale if config.dynamic_loss_scale else None

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, folder: Path, tag: str, client_state: dict) -> Exception | None:
        """DeepSpeed's files of tag `tag` (model, optimizer, `client_state`), and for the whole
        model the layer files the pipeline writes itself, so every checkpoint has the same
        layout for conversion and weights-only loading; with LoRA, the adapters' tensors alone.
        A write that fails (a full disk) is returned, not raised, once this rank has met the
        barrier DeepSpeed's save ends with, so that every rank goes on to hear of it
        (`checkpointing.save_checkpoint`)."""
        try:
            self.engine.save_checkpoint(str(folder), tag=tag, client_state=client_state, save_latest=False,
                                        exclude_frozen_parameters=self.adapters_only)
        except (OSError, RuntimeError) as error:  # torch's zip writer raises RuntimeError on a full disk
            dist.barrier()  # the one the other ranks wait in at the end of DeepSpeed's save
            return error
        if self.is_pipeline:
            return None
        model = self.engine.module.model
        zero3 = self.train.parallel.zero_stage == 3
        with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=zero3):
            if parallel_state.get_data_parallel_rank() == 0:
                try:
                    save_model_layers(model, folder / tag, self.spec.adapter,
                                      parallel_state.get_tensor_model_parallel_rank(), self.adapters_only)
                except (OSError, RuntimeError) as error:
                    return error
        return None

    def load(self, folder: Path, tag: str) -> dict:
        """Weights and optimizer states of a training checkpoint; its client state."""
        path, client_state = self.engine.load_checkpoint(
            str(folder), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False,
            load_module_strict=not self.adapters_only)
        if path is None:
            raise RuntimeError(f"--load {folder}: DeepSpeed could not load {tag}")
        if self.engine.load_universal_checkpoint():
            self._steps_beside_their_parameters()
        return client_state

    @property
    def _adam(self) -> torch.optim.Optimizer:
        """The torch AdamW inside DeepSpeed's ZeRO wrapper."""
        return getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)

    def forget_optimizer_state(self) -> None:
        """A fresh Adam (zero moments, step 0) on the loaded weights: `--no-load-optim` or
        `--finetune` with a universal checkpoint, whose loader always brings the moments."""
        self._adam.state.clear()

    def _steps_beside_their_parameters(self) -> None:
        """DeepSpeed's universal loader sets Adam's `step` to the CPU tensor it read; the fused
        AdamW of a GPU run needs it on the parameter's device (torch's own `load_state_dict` moves
        it; this path does not)."""
        for state_of, state in self._adam.state.items():
            step = state.get("step")
            if torch.is_tensor(step) and step.device != state_of.device:
                state["step"] = step.to(state_of.device, torch.float32)

    @staticmethod
    def _data_parallel_mean(value: torch.Tensor) -> torch.Tensor:
        group = parallel_state.get_data_parallel_group()
        value = value.to(collective_device(group))
        dist.all_reduce(value, group=group)
        return value.cpu() / dist.get_world_size(group)
