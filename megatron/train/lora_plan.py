"""Where a LoRA run's base model and adapters come from, and its LoRA settings, decided before
anything is built (the LoRA side of `load_plan.py`):

- the base: `--load`'s checkpoint (its weights, whatever training state it has), or, when `--load`
  or a relaunch's `--save` holds one of our LoRA checkpoints, the base that checkpoint records;
- the adapters: a relaunch (or `--load` of a LoRA checkpoint) resumes them with their optimizer
  through DeepSpeed; `--lora-load DIR` (or `--load` of a LoRA checkpoint with `--finetune` /
  `--no-load-optim`) starts from their weights; otherwise they start fresh (A from `--seed`, B zero);
- the settings: the `--lora-*` flags given, else those of the adapters it starts from, else the
  defaults (alpha = r, no dropout, every linear layer of the family's blocks, one A per fused
  layer). Adapters continue only with their own rank, targets, alpha, scaling rule and fused-part
  layout (an imported PEFT adapter's own A per projection), and only on a base of their shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from megatron.checkpoint.layout import CheckpointError, has_checkpoint, read_latest
from megatron.checkpoint.metadata import CheckpointMetadata, read_metadata
from megatron.models.common.lora import LoraConfig
from megatron.models.spec import ModelSpec
from megatron.train.config import LoraFlags, TrainConfig
from megatron.train.errors import ConfigError
from megatron.train.load_plan import LoadPlan


@dataclass(frozen=True)
class LoraPlan:
    config: LoraConfig
    base: dict  # {"folder": absolute path, "tag": tag}: the frozen model's weights
    adapters: tuple[Path, str] | None = None  # a LoRA checkpoint's (folder, tag) whose adapter weights start the run


def _metadata(folder: Path, flag: str) -> CheckpointMetadata:
    try:
        return read_metadata(folder)
    except CheckpointError as error:
        raise ConfigError(f"{flag} {error}") from None


def _settings(flags: LoraFlags, source: LoraConfig | None, where: str, spec: ModelSpec) -> LoraConfig:
    given = {"rank": flags.rank, "alpha": flags.alpha, "targets": flags.targets, "rslora": flags.rslora}
    if flags.targets is not None:
        unknown = [t for t in flags.targets if t not in spec.lora_targets]
        if unknown:
            raise ConfigError(f"--lora-target {' '.join(unknown)}: not a linear layer of the {spec.name} family's "
                              f"blocks; choose from {' '.join(spec.lora_targets)}")
    if source is not None:
        for field, flag in (("rank", "--lora-rank"), ("alpha", "--lora-alpha"), ("targets", "--lora-target"),
                            ("rslora", "--lora-rslora")):
            value = given[field]
            if value is not None and value != getattr(source, field):
                raise ConfigError(f"{flag} {value} disagrees with the adapters in {where} "
                                  f"({field} = {getattr(source, field)!r}): drop it or start fresh adapters")
        dropout = source.dropout if flags.dropout is None else flags.dropout
        return dataclasses.replace(source, dropout=dropout)
    if flags.rank is None:
        raise ConfigError("--lora-rank is needed for new adapters")
    return LoraConfig(rank=flags.rank, alpha=flags.rank if flags.alpha is None else flags.alpha,
                      targets=spec.lora_targets if flags.targets is None else flags.targets,
                      dropout=flags.dropout or 0.0, rslora=bool(flags.rslora))


def lora_plan(train: TrainConfig, spec: ModelSpec, plan: LoadPlan) -> LoraPlan | None:
    """None for full finetuning; a checkpoint of adapters loaded without `--lora-*` flags is
    refused (its base is frozen in it)."""
    flags = train.lora
    saved = _metadata(plan.folder, "--load") if plan.folder is not None else None
    if flags is None:
        if saved is not None and saved.lora is not None:
            raise ConfigError(f"{plan.folder} holds LoRA adapters, not a model: continue them with --lora-rank "
                              f"{saved.lora.rank}, or merge them into the base first "
                              "(tools/convert_checkpoint/megatron_to_hf.py --merge-lora)")
        return None
    if plan.kind == "scratch":
        raise ConfigError("LoRA adapts a model: give its checkpoint in --load (tools/convert_checkpoint/"
                          "hf_to_megatron.py converts a HF model)")
    if plan.kind == "universal":
        raise ConfigError("--universal-checkpoint does not hold LoRA adapters: load the base with --load alone")
    if train.parallel.zero_stage == 3:
        raise ConfigError("--zero-stage 3 is not supported with LoRA (the adapters are a few MB: ZeRO-1 or 2 "
                          "shards their optimizer already)")
    if saved.lora is not None:  # continuing adapters: ours, on the base they record
        if flags.load is not None:
            raise ConfigError(f"--lora-load: {plan.folder} holds adapters already; give one of them")
        base = saved.lora_base
        if base is None or not has_checkpoint(base["folder"]):
            raise ConfigError(f"{plan.folder}: its base checkpoint {base and base['folder']} is gone: "
                              "give the base in --load and these adapters in --lora-load")
        config = _settings(flags, saved.lora, str(plan.folder), spec)
        return LoraPlan(config, base, None if plan.kind == "resume" else (plan.folder, plan.tag))
    base = {"folder": str(Path(plan.folder).resolve()), "tag": plan.tag}
    if flags.load is None:
        return LoraPlan(_settings(flags, None, "", spec), base)
    folder = Path(flags.load)
    if not has_checkpoint(folder):
        raise ConfigError(f"--lora-load {folder}: no checkpoint there")
    source = _metadata(folder, "--lora-load")
    if source.lora is None:
        raise ConfigError(f"--lora-load {folder}: holds a model, not LoRA adapters")
    if source.family != saved.family or \
            spec.pipeline_parameter_shapes(source.model) != spec.pipeline_parameter_shapes(saved.model):
        raise ConfigError(f"--lora-load {folder}: its adapters are for another base ({source.family}, "
                          f"{source.model.num_layers} layers, hidden {source.model.hidden_size}) than --load "
                          f"{plan.folder} ({saved.family}, {saved.model.num_layers} layers, hidden "
                          f"{saved.model.hidden_size})")
    return LoraPlan(_settings(flags, source.lora, f"--lora-load {folder}", spec), base, (folder, read_latest(folder)))
