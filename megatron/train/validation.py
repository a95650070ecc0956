"""The checks that stop a bad launch before any work, each naming the flag to change: the
process layout against the world size, and the settings of a built `TrainConfig` that cannot
work together."""

from __future__ import annotations

import importlib.util
import os

import torch

from megatron.train.config import TrainConfig
from megatron.train.errors import ConfigError


def data_parallel_size(world: int, tp: int, pp: int) -> int:
    if tp < 1 or pp < 1 or world % (tp * pp):
        raise ConfigError(f"world size {world} is not divisible by --tensor-model-parallel-size {tp} x "
                          f"--pipeline-model-parallel-size {pp}")
    return world // (tp * pp)


def check_global_batch(global_batch: int, micro: int, dp: int, world: int, tp: int, pp: int) -> None:
    if micro < 1 or global_batch % (micro * dp):
        raise ConfigError(f"--global-batch-size {global_batch} is not divisible by --micro-batch-size "
                          f"{micro} x data-parallel size {dp} (world {world} / TP {tp} / PP {pp})")


def samples(iters: int | None, count: int | None, global_batch: int, name: str) -> int | None:
    """`--NAME-iters` or `--NAME-samples` (`count`) as a sample count (None when neither is given)."""
    if iters and count:
        raise ConfigError(f"give --{name}-iters or --{name}-samples, not both")
    return iters * global_batch if iters else count


def check_layout(spec, config, tp: int, pp: int, partition_method: str | None) -> None:
    """The model `config` split over TP (heads, padded vocabulary) and, with a
    `partition_method`, its pipeline stages over PP (each holding parameters)."""
    try:
        config.check_tensor_parallel(tp)
        if partition_method is not None:
            spec.check_partition(config, tp, pp, partition_method)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def validate(train: TrainConfig) -> None:
    """Settings of different groups that cannot work together."""
    model, par, opt = train.model, train.parallel, train.optimizer
    if par.zero_stage >= 2 and par.pipeline > 1:
        raise ConfigError(f"ZeRO stage {par.zero_stage} does not work with pipeline parallelism: use "
                          "--zero-stage 1 (or 0) with --pipeline-model-parallel-size > 1")
    if train.nonfinite_loss == "skip" and par.zero_stage == 0 and train.precision != "fp16":
        raise ConfigError("--nonfinite-loss skip needs ZeRO stage >= 1 or --fp16 (DeepSpeed then "
                          "skips steps with non-finite gradients)")
    if model.attention_backend == "flex" and model.attention_dropout:
        raise ConfigError(f"--attention-backend flex has no attention dropout: pass --attention-dropout 0 "
                          f"(not {model.attention_dropout}) or --attention-backend reference")
    if train.precision == "fp16" and not torch.cuda.is_available() and not train.dry_run:
        raise ConfigError("--fp16 needs a GPU (DeepSpeed has no fp16 on CPU): pass --bf16 or neither")
    if model.attention_backend == "triton" and not train.dry_run:
        _check_triton()
    if train.checkpoint.load is None and None in (model.num_layers, model.hidden_size, model.num_heads):
        raise ConfigError("without --load, give --num-layers, --hidden-size and --num-attention-heads")
    if model.num_heads and model.num_heads % par.tensor:
        raise ConfigError(f"--tensor-model-parallel-size {par.tensor} does not divide --num-attention-heads "
                          f"{model.num_heads}")
    if train.checkpoint.save_interval and not train.checkpoint.save:
        raise ConfigError("--save-interval needs --save")
    if train.checkpoint.finetune and not train.checkpoint.load:
        raise ConfigError("--finetune needs --load")
    if train.checkpoint.universal and not train.checkpoint.load:
        raise ConfigError("--universal-checkpoint needs --load (the folder holding latest_universal)")
    if train.checkpoint.universal and par.zero_stage != 1:
        raise ConfigError(f"--universal-checkpoint loads into ZeRO-1's partitioned optimizer on the "
                          f"PipelineModule: use --zero-stage 1, not {par.zero_stage}")
    intervals = [("--log-interval", train.logging.log_interval), ("--eval-interval", train.logging.eval_interval)]
    if train.eval_tasks:
        intervals.append(("--eval-tasks-interval", train.eval_tasks.interval))
    for flag, value in intervals:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1")
    if opt.warmup_samples > opt.decay_samples:
        raise ConfigError(f"the LR warmup ({opt.warmup_samples} samples) is longer than its decay "
                          f"({opt.decay_samples} samples)")
    if train.data.train is None:
        raise ConfigError("no training data: give --data-path or --train-weighted-split-paths")


def _check_triton() -> None:
    """`--attention-backend triton` needs Triton, and a GPU or Triton's CPU interpreter."""
    if importlib.util.find_spec("triton") is None:
        raise ConfigError("--attention-backend triton needs the triton package (it comes with PyTorch's CUDA "
                          "wheels; else pip install triton), or pass --attention-backend reference")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("--attention-backend triton without a GPU runs only in Triton's interpreter: set "
                          "TRITON_INTERPRET=1 (slow; for tests) or pass --attention-backend reference")
