"""Saving and restoring a run's training checkpoints, on the folder layout of `megatron.checkpoint`.

A save writes `SAVE/global_stepN/` (DeepSpeed's model, optimizer and per-rank RNG states; the
layer files `megatron_to_hf.py` reads; `progress.json` with the iteration, data position and LR
schedule) and last `manifest.json` (every file's size and xxh3 checksum, the files spread over the
ranks to read them back), then the metadata, and only when every
rank is done, the `latest` pointer (and Megatron's `latest_checkpointed_iteration.txt`), each by
an atomic rename. A save interrupted part-way is therefore never the one `latest` names. The
scripts DeepSpeed drops beside a save (`zero_to_fp32.py`), which cannot read our checkpoints, are
removed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch.distributed as dist

from megatron.checkpoint.integrity import (PROGRESS_FILE, checksum_problem, file_checksum, listed_files, saved_files,
                                           write_manifest)
from megatron.checkpoint.layout import tag_for, write_latest
from megatron.checkpoint.metadata import CheckpointMetadata, write_metadata
from megatron.checkpoint.retention import prune
from megatron.train.distributed import rng_states, set_rng_states
from megatron.train.engine import TrainingEngine
from megatron.train.config import TrainConfig
from megatron.train.load_plan import LoadPlan, fallback_plan
from megatron.train.progress import TrainingProgress
from megatron.utils.atomic_files import write_atomically


# DeepSpeed copies these into every save; they fail on our pipeline checkpoints (their model states
# hold no `module`): tools/convert_checkpoint/megatron_to_hf.py converts ours
DEEPSPEED_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")


def save_checkpoint(engine: TrainingEngine, save_dir: str, progress: TrainingProgress,
                    meta: CheckpointMetadata, retain: int | None = None) -> Path:
    """With `retain`, the complete checkpoints beyond the `retain` newest are deleted once this
    one is complete and `latest` names it (`checkpoint/retention.py`)."""
    folder = Path(save_dir)
    tag = tag_for(progress.iteration)
    engine.save(folder, tag, client_state={"rng": rng_states()})
    dist.barrier()
    if dist.get_rank() == 0:
        for script in DEEPSPEED_SCRIPTS:
            (folder / script).unlink(missing_ok=True)
        write_atomically(folder / tag / PROGRESS_FILE, json.dumps(dataclasses.asdict(progress), indent=1))
    dist.barrier()
    names = saved_files(folder / tag)
    checksums = {name: file_checksum(folder / tag / name) for name in _share(names)}
    gathered: list[dict[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, checksums)
    if dist.get_rank() == 0:
        write_manifest(folder / tag, {name: value for part in gathered for name, value in part.items()})
        write_metadata(folder, meta)
        write_latest(folder, tag, progress.iteration)
        if retain is not None:
            for old in prune(folder, retain):
                print(f"deleted checkpoint {folder / old} (--save-retain {retain})", flush=True)
    dist.barrier()
    return folder / tag


def _share(names: list[str]) -> list[str]:
    """This rank's share of a checkpoint's files: every rank reads about as much."""
    return names[dist.get_rank()::dist.get_world_size()]


def damaged_file(tag_dir: Path) -> str | None:
    """The first file of a checkpoint whose checksum differs from its manifest's, each rank
    checking its share; the same answer on every rank."""
    issues: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(issues, checksum_problem(tag_dir, _share(listed_files(tag_dir))))
    return next((issue for issue in issues if issue), None)


def verified(train: TrainConfig, plan: LoadPlan) -> LoadPlan:
    """`plan`, its checkpoint's files checked against their checksums (each rank its share) before
    anything loads; a damaged file stops the launch naming it (ConfigError), or with
    `--checkpoint-fallback` the newest intact checkpoint before it is planned instead."""
    while plan.kind in ("weights", "resume") and (issue := damaged_file(plan.folder / plan.tag)):
        previous = fallback_plan(train, plan, issue)
        if dist.get_rank() == 0:
            print(f"warning: {plan.folder}: {issue}; falling back to {previous.tag}", flush=True)
        plan = previous
    return plan


def resume(engine: TrainingEngine, plan: LoadPlan, load_rng: bool) -> None:
    """Weights, optimizer and (with `load_rng`) RNG states of a training checkpoint."""
    client_state = engine.load(plan.folder, plan.tag)
    if load_rng:
        set_rng_states(client_state["rng"])
