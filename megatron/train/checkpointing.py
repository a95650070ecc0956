"""Saving and restoring a run's training checkpoints, on the folder layout of `megatron.checkpoint`.

A save writes `SAVE/global_stepN/` (DeepSpeed's model, optimizer and per-rank RNG states; the
layer files `megatron_to_hf.py` reads; `progress.json` with the iteration, data position and LR
schedule) and last `manifest.json` (every file's size and xxh3 checksum, the files spread over the
ranks to read them back), then the metadata, and only when every
rank is done, the `latest` pointer (and Megatron's `latest_checkpointed_iteration.txt`), each by
an atomic rename. A save interrupted part-way is therefore never the one `latest` names. The
scripts DeepSpeed drops beside a save (`zero_to_fp32.py`), which cannot read our checkpoints, are
removed. A save that fails on a rank (a full disk or quota) is reported once, by the first rank
that hit it ("no space left on DIR while saving TAG (free X GiB; the last checkpoint took Y GiB)"),
its half-written folder removed so that it does not hold the space, `latest` as it was, and the
run stops (`SaveFailed`); the same command resumes once there is room. Before a save, a warning
when the free space is below the last checkpoint's size.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from megatron.checkpoint.integrity import (PROGRESS_FILE, checksum_problem, file_checksum, listed_files, saved_files,
                                           write_manifest)
from megatron.checkpoint.layout import has_checkpoint, read_latest, tag_for, write_latest
from megatron.checkpoint.metadata import CheckpointMetadata, write_metadata
from megatron.checkpoint.retention import prune
from megatron.train.distributed import rng_states, set_rng_states
from megatron.train.engine import TrainingEngine
from megatron.train.config import TrainConfig
from megatron.train.load_plan import LoadPlan, fallback_plan
from megatron.train.progress import TrainingProgress
from megatron.utils.atomic_files import write_atomically

GIB = 2**30


# DeepSpeed copies these into every save; they fail on our pipeline checkpoints (their model states
# hold no `module`): tools/convert_checkpoint/megatron_to_hf.py converts ours
DEEPSPEED_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")


class SaveFailed(RuntimeError):
    """A save that could not complete: reported once, by the first rank that hit it; its
    half-written folder removed and `latest` as it was."""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem that holds (or will hold) `folder`."""
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _last_checkpoint_bytes(folder: Path) -> int | None:
    return folder_bytes(folder / read_latest(folder)) if has_checkpoint(folder) else None


def _no_space(error: Exception, folder: Path) -> bool:
    """A write that failed because the filesystem is full (torch's zip writer says only
    "unexpected pos"; what is left free tells)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return free_bytes(folder) < NEARLY_FULL


NEARLY_FULL = 16 * 2**20


def _failure(error: Exception | None, folder: Path, tag: str) -> str | None:
    """Every rank's outcome of a save step: the first failing rank's message (None if all wrote)."""
    mine = None
    if error is not None:
        if _no_space(error, folder):
            last = _last_checkpoint_bytes(folder)
            mine = (f"no space left on {folder} while saving {tag} (free {free_bytes(folder) / GIB:.2f} GiB; "
                    + (f"the last checkpoint took {last / GIB:.2f} GiB)" if last else "no earlier checkpoint)"))
        else:
            mine = f"saving {tag} in {folder} failed: {error}"
    outcomes: list[tuple[int, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, None if mine is None else (dist.get_rank(), mine))
    first = next((outcome for outcome in outcomes if outcome), None)
    if first is None:
        return None
    if first[0] == dist.get_rank():
        print(f"error: {first[1]}", file=sys.stderr, flush=True)
    return first[1]


def _abandon(folder: Path, tag: str, message: str) -> None:
    """The half-written tag removed (not the one `latest` names), every rank stopping."""
    if dist.get_rank() == 0 and not (has_checkpoint(folder) and read_latest(folder) == tag):
        shutil.rmtree(folder / tag, ignore_errors=True)
    dist.barrier()
    raise SaveFailed(message)


def _on_rank_zero(step) -> Exception | None:
    if dist.get_rank() != 0:
        return None
    try:
        step()
    except OSError as error:
        return error
    return None


def save_checkpoint(engine: TrainingEngine, save_dir: str, progress: TrainingProgress,
                    meta: CheckpointMetadata, retain: int | None = None) -> Path:
    """With `retain`, the complete checkpoints beyond the `retain` newest are deleted once this
    one is complete and `latest` names it (`checkpoint/retention.py`). A write that fails on any
    rank (a full disk) raises SaveFailed on every rank, its folder removed, `latest` untouched."""
    folder = Path(save_dir)
    tag = tag_for(progress.iteration)
    last = _last_checkpoint_bytes(folder)
    if dist.get_rank() == 0 and last and free_bytes(folder) < last:
        print(f"warning: {folder} has {free_bytes(folder) / GIB:.2f} GiB free and the last checkpoint took "
              f"{last / GIB:.2f} GiB: saving {tag} may run out of space", flush=True)
    if message := _failure(engine.save(folder, tag, client_state={"rng": rng_states()}), folder, tag):
        _abandon(folder, tag, message)

    def progress_file() -> None:
        for script in DEEPSPEED_SCRIPTS:
            (folder / script).unlink(missing_ok=True)
        write_atomically(folder / tag / PROGRESS_FILE, json.dumps(dataclasses.asdict(progress), indent=1))

    if message := _failure(_on_rank_zero(progress_file), folder, tag):
        _abandon(folder, tag, message)
    names = saved_files(folder / tag)
    checksums = {name: file_checksum(folder / tag / name) for name in _share(names)}
    gathered: list[dict[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, checksums)

    def manifest_and_pointers() -> None:
        write_manifest(folder / tag, {name: value for part in gathered for name, value in part.items()})
        write_metadata(folder, meta)
        write_latest(folder, tag, progress.iteration)

    if message := _failure(_on_rank_zero(manifest_and_pointers), folder, tag):
        _abandon(folder, tag, message)
    if dist.get_rank() == 0 and retain is not None:
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
