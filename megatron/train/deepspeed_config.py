"""The DeepSpeed config of a run: the user's JSON (`--deepspeed_config`), completed from the flags.

The flags own the batch sizes, precision, gradient clipping and ZeRO stage; a JSON value that
says otherwise stops the run naming both, rather than one silently winning. The optimizer and LR
schedule are ours (`--lr`, `--adam-*`), so a JSON `optimizer` or `scheduler` section is refused.
"""

from __future__ import annotations

import copy
import json

from megatron.train.config import TrainConfig
from megatron.train.errors import ConfigError


def read_deepspeed_json(path: str | None) -> dict:
    """The JSON at `path` (`{}` without one), read once when the flags are parsed."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--deepspeed_config {path}: file not found") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--deepspeed_config {path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--deepspeed_config {path}: expected a JSON object")
    return config


def _agree(config: dict, key: str, value, flag: str, path: str | None) -> None:
    if key in config and config[key] != value:
        raise ConfigError(f"--deepspeed_config {path} sets {key}={config[key]!r} but the flags give "
                          f"{value!r} ({flag}): remove it from the JSON or change the flag")
    config[key] = value


def deepspeed_config(train: TrainConfig) -> dict:
    """The config `deepspeed.initialize` takes: the run's JSON (as read at parse time) completed
    from the flags."""
    path = train.deepspeed_config
    config = copy.deepcopy(train.deepspeed_json)
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ConfigError(f"--deepspeed_config {path}: remove its '{section}' section; the "
                              "optimizer and LR schedule come from --lr, --adam-*, --lr-* flags")
    batch = train.batch
    _agree(config, "train_micro_batch_size_per_gpu", batch.micro, "--micro-batch-size", path)
    _agree(config, "train_batch_size", batch.global_batch, "--global-batch-size", path)
    _agree(config, "gradient_accumulation_steps", batch.gradient_accumulation,
           "--global-batch-size / (--micro-batch-size x data-parallel size)", path)
    _agree(config, "gradient_clipping", train.optimizer.clip_grad, "--clip-grad", path)
    for precision in ("fp16", "bf16"):
        wanted = train.precision == precision
        section = config.setdefault(precision, {})
        if section.get("enabled", False) != wanted and "enabled" in section:
            raise ConfigError(f"--deepspeed_config {path} has {precision}.enabled={section['enabled']} "
                              f"but the flags ask for {train.precision}: pass --{precision} or change the JSON")
        section["enabled"] = wanted
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", train.parallel.zero_stage) != train.parallel.zero_stage:
        raise ConfigError(f"--deepspeed_config {path} has zero_optimization.stage={zero['stage']} but "
                          f"--zero-stage is {train.parallel.zero_stage}")
    zero["stage"] = train.parallel.zero_stage
    config.setdefault("zero_allow_untested_optimizer", True)  # ours is torch's AdamW
    config.setdefault("steps_per_print", 10**9)  # our own log line reports progress
    config.setdefault("wall_clock_breakdown", False)
    return config
