"""Where a run's model comes from, decided before anything is built:

- `scratch`: no `--load` (or nothing saved there yet): random init from the shape flags;
- `weights`: a checkpoint without training state (converted from HF), or `--finetune` /
  `--no-load-optim`: the weights only, read from its layer files at any TP/PP;
- `resume`: one of our training checkpoints: weights, optimizer, RNG through DeepSpeed's loader,
  and the progress (iteration, data position, LR schedule) unless `--reset-progress`. A
  checkpoint in `--save` is always resumed (a relaunch: the same command every time).
- `universal`: with `--universal-checkpoint`, the universal checkpoint `latest_universal` names in
  `--load` (DeepSpeed's format, `tools/convert_checkpoint/to_universal.py`): weights and Adam
  moments at any TP x PP x DP (a fresh Adam with `--no-load-optim` or `--finetune`), the progress
  it carries (unless `--reset-progress` or `--finetune`); the RNG is reseeded.

With LoRA (`--lora-rank`), a model's checkpoint in `--load` is the frozen base: its weights, at any
TP/PP, whatever training state it has; the adapters' side is `lora_plan.py`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from megatron.checkpoint.integrity import PROGRESS_FILE, newest_complete_tag, problem
from megatron.checkpoint.layout import LATEST_UNIVERSAL, CheckpointError, has_checkpoint, read_latest
from megatron.checkpoint.metadata import MODEL_CONFIG_FILE, CheckpointMetadata, read_metadata
from megatron.checkpoint.universal import shape_problem
from megatron.models import get_model_spec
from megatron.models.common.vocab import padded_vocab_size
from megatron.models.spec import ModelSpec, config_fields
from megatron.train.config import ModelConfig, TrainConfig
from megatron.train.errors import ConfigError
from megatron.train.progress import TrainingProgress
from megatron.train.validation import check_layout


@dataclass(frozen=True)
class LoadPlan:
    kind: str  # "scratch", "weights", "resume" or "universal"
    folder: Path | None = None
    tag: str | None = None
    progress: TrainingProgress | None = None  # None: start at iteration 0


def plan_load(train: TrainConfig) -> LoadPlan:
    """A checkpoint in `--save` means this is a relaunch: resume from it, whatever `--load`,
    `--no-load-optim`, `--reset-progress` and `--finetune` say (they describe the first launch).
    Otherwise start from `--load` as those flags say, or from scratch."""
    args = train.checkpoint
    relaunch = has_checkpoint(args.save)
    if not relaunch and args.universal:
        return _universal_plan(Path(args.load), args.reset_progress or args.finetune)
    if not relaunch and not has_checkpoint(args.load):
        return LoadPlan("scratch")
    folder = Path(args.save if relaunch else args.load)
    flag = "--save" if relaunch else "--load"
    return _plan_at(train, folder, _complete_tag(folder, flag, train.checkpoint.fallback), relaunch)


def fallback_plan(train: TrainConfig, plan: LoadPlan, issue: str) -> LoadPlan:
    """The plan for the newest complete checkpoint before `plan`'s, whose `issue` (a damaged file,
    found when it was about to load) stops the launch unless `--checkpoint-fallback`."""
    relaunch = has_checkpoint(train.checkpoint.save) and Path(train.checkpoint.save) == plan.folder
    flag = "--save" if relaunch else "--load"
    if not train.checkpoint.fallback:
        raise ConfigError(f"{flag} {plan.folder}: {issue}. Pass --checkpoint-fallback to start from the newest "
                          "intact checkpoint before it")
    previous = newest_complete_tag(plan.folder, plan.tag)
    if previous is None:
        raise ConfigError(f"{flag} {plan.folder}: {issue}, and no complete checkpoint precedes {plan.tag}")
    return _plan_at(train, plan.folder, previous, relaunch)


def _plan_at(train: TrainConfig, folder: Path, tag: str, relaunch: bool) -> LoadPlan:
    """How to start from checkpoint `tag` of `folder` (`plan_load`'s rules)."""
    args = train.checkpoint
    if train.lora is not None and not relaunch and _is_model(folder):  # LoRA's frozen base: its weights
        return LoadPlan("weights", folder, tag)
    progress_file = folder / tag / PROGRESS_FILE
    first_launch_only = not relaunch and (args.finetune or args.no_load_optim)
    if not progress_file.is_file() or first_launch_only:
        kind = "weights"
    else:
        kind = "resume"
    progress = None
    if progress_file.is_file() and (relaunch or not (args.finetune or args.reset_progress)):
        progress = TrainingProgress(**json.loads(progress_file.read_text()))
    return LoadPlan(kind, folder, tag, progress)


def _is_model(folder: Path) -> bool:
    """A model's checkpoint, not one of LoRA adapters."""
    try:
        return read_metadata(folder).lora is None
    except CheckpointError as error:
        raise ConfigError(f"--load {error}") from None


def _universal_plan(folder: Path, reset_progress: bool) -> LoadPlan:
    """The universal checkpoint in `folder`, checked before any work: its pointer, DeepSpeed's
    per-parameter `zero/` folder, its model files and our progress."""
    try:
        tag = read_latest(folder, LATEST_UNIVERSAL)
    except CheckpointError as error:
        raise ConfigError(f"--universal-checkpoint --load {error}") from None
    tag_dir = folder / tag
    missing = [what for what, present in (("zero/ (the per-parameter states)", (tag_dir / "zero").is_dir()),
                                          ("mp_rank_*_model_states.pt", any(tag_dir.glob("mp_rank_*_model_states.pt"))),
                                          (PROGRESS_FILE, (tag_dir / PROGRESS_FILE).is_file()))
               if not present]
    if missing:
        raise ConfigError(f"--universal-checkpoint --load {folder}: {tag_dir} is not a complete universal "
                          f"checkpoint: no {', '.join(missing)}")
    progress = None if reset_progress else TrainingProgress(**json.loads((tag_dir / PROGRESS_FILE).read_text()))
    return LoadPlan("universal", folder, tag, progress)


def _complete_tag(folder: Path, flag: str, fallback: bool) -> str:
    tag = read_latest(folder)
    issue = problem(folder / tag)
    if issue is None:
        return tag
    if not fallback:
        raise ConfigError(f"{flag} {folder}: the checkpoint 'latest' names is unusable: {issue}. "
                          "Pass --checkpoint-fallback to start from the newest complete one before it")
    previous = newest_complete_tag(folder, tag)
    if previous is None:
        raise ConfigError(f"{flag} {folder}: {issue}, and no complete checkpoint precedes {tag}")
    print(f"warning: {flag} {folder}: {issue}; falling back to {previous}", flush=True)
    return previous


def model_spec(train: TrainConfig, plan: LoadPlan) -> ModelSpec:
    """The run's model family: the checkpoint's (its metadata) when loading, where architecture
    flags naming another family are refused; else the one they name, BLOOM without them."""
    family = train.model.family
    if plan.kind == "scratch":
        return get_model_spec(family or "bloom")
    try:
        saved = read_metadata(plan.folder).family
    except CheckpointError as error:
        raise ConfigError(f"--load {error}") from None
    if family is not None and family != saved:
        raise ConfigError(f"--position-embedding-type, --normalization and --swiglu describe the {family} family, "
                          f"but the checkpoint in --load {plan.folder} is a {saved} model: drop those flags")
    return get_model_spec(saved)


def _family_fields(spec: ModelSpec, args: ModelConfig, scratch: bool) -> dict:
    """The options and architecture flags as fields of the family's model config: an
    architecture flag given for a family without that field is refused; Megatron's defaults
    (not given) go to a run from random initialisation only."""
    names = config_fields(spec.config_class)
    fields = {name: value for name, value in args.options().items() if name in names}
    for flag in args.architecture:
        if flag.field not in names:
            if flag.given:
                raise ConfigError(f"{flag.flag} does not apply to the {spec.name} family")
        elif flag.given or scratch:
            fields[flag.field] = flag.value
    return fields


def run_metadata(train: TrainConfig, spec: ModelSpec, plan: LoadPlan, vocab_size: int, eod: int,
                 pad: int) -> CheckpointMetadata:
    """The model's config and the HF config it exports to, as the metadata its checkpoints will
    carry: from the checkpoint's metadata when loading (shape and architecture flags, if given,
    must agree), else from the flags and the tokenizer's vocabulary padded by Megatron's rule."""
    args = train.model
    tp = train.parallel.tensor
    if plan.kind == "scratch":
        vocab = padded_vocab_size(vocab_size, tp, args.make_vocab_size_divisible_by, args.pad_vocab_size_to)
        try:
            config = spec.config_class(vocab, args.hidden_size, args.num_layers, args.num_heads,
                                       init_method_std=args.init_method_std, **_family_fields(spec, args, True))
            hf_config = config.to_hf(vocab_size, bos_token_id=eod, eos_token_id=eod, pad_token_id=pad).to_dict()
        except ValueError as error:  # a shape that does not split, a model no HF class holds
            raise ConfigError(str(error)) from None
    else:
        try:
            meta = read_metadata(plan.folder)
        except CheckpointError as error:
            raise ConfigError(f"--load {error}") from None
        given = _family_fields(spec, args, False)
        for flag in args.architecture:
            if flag.field in given and given[flag.field] != getattr(meta.model, flag.field):
                raise ConfigError(f"{flag.flag} disagrees with the checkpoint in --load {plan.folder} "
                                  f"({flag.field} = {getattr(meta.model, flag.field)!r} there, {flag.value!r} here)")
        config = dataclasses.replace(meta.model, **given)
        hf_config = meta.hf_config
        saved_layout = (meta.tensor_model_parallel_size, meta.pipeline_model_parallel_size)
        if plan.kind == "resume" and saved_layout != (tp, train.parallel.pipeline):
            raise ConfigError(f"{plan.folder}/{plan.tag} was saved at TP {saved_layout[0]} x PP {saved_layout[1]}, "
                              f"this run is TP {tp} x PP {train.parallel.pipeline}: make it universal "
                              "(tools/convert_checkpoint/to_universal.py) and start a new --save with "
                              "--universal-checkpoint, or load its weights alone with --no-load-optim")
        if plan.kind == "universal":  # its rows, padded for this layout (DeepSpeed adds zero rows)
            issue = shape_problem(plan.folder / plan.tag, spec.pipeline_parameter_shapes(config))
            if issue:
                raise ConfigError(f"--universal-checkpoint --load {plan.folder}: {issue} "
                                  f"(the model of {plan.folder / MODEL_CONFIG_FILE})")
            try:
                config = dataclasses.replace(config, vocab_size=padded_vocab_size(
                    config.vocab_size, tp, args.make_vocab_size_divisible_by, args.pad_vocab_size_to))
            except ValueError as error:
                raise ConfigError(f"--universal-checkpoint: its {config.vocab_size} embedding rows: {error}") from None
        for flag, given, saved in (("--num-layers", args.num_layers, config.num_layers),
                                   ("--hidden-size", args.hidden_size, config.hidden_size),
                                   ("--num-attention-heads", args.num_heads, config.num_heads)):
            if given is not None and given != saved:
                raise ConfigError(f"{flag} {given} disagrees with the checkpoint in --load {plan.folder} ({saved})")
        if hf_config.get("vocab_size", vocab_size) > config.vocab_size or vocab_size > config.vocab_size:
            raise ConfigError(f"--tokenizer-name-or-path has {vocab_size} tokens, more than the "
                              f"checkpoint's embedding ({config.vocab_size} rows)")
    check_layout(spec, config, tp, train.parallel.pipeline,
                 train.parallel.partition_method if train.parallel.uses_pipeline else None)
    try:
        config.check_sequence_length(train.data.seq_length)
    except ValueError as error:
        raise ConfigError(f"the model in {plan.folder or 'the flags'}: {error}") from None
    return CheckpointMetadata(config, hf_config, tp, train.parallel.pipeline, spec.name)
