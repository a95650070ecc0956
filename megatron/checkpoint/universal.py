"""DeepSpeed universal checkpoints of our training checkpoints: one folder per parameter (fp32
weights and Adam moments, whole over TP and DP) that `--universal-checkpoint` resumes at any
TP x PP x DP. The conversion itself is DeepSpeed's own (`python -m
deepspeed.checkpoint.ds_to_universal`), reading the `universal_checkpoint_info` every save of the
pipeline carries; around it, `make_universal` checks the source before any work, writes into a
temporary folder that replaces `TAG_universal` whole, adds our progress and a manifest, checks
that every parameter came out with its moments, and last points `latest_universal` at it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from deepspeed.checkpoint.constants import PARAM_SHAPES, UNIVERSAL_CHECKPOINT_INFO

from megatron.checkpoint.integrity import PROGRESS_FILE, problem, write_manifest
from megatron.checkpoint.layout import LATEST_UNIVERSAL, CheckpointError, read_latest
from megatron.checkpoint.metadata import read_metadata
from megatron.utils.atomic_files import atomic_folder, write_atomically

STATES = ("fp32", "exp_avg", "exp_avg_sq")


def _parameter_names(tag_dir: Path) -> tuple[set[str], dict]:
    """The ZeRO-optimised parameter names of every model file, and one file's universal info."""
    names, info = set(), None
    for path in sorted(tag_dir.glob("mp_rank_*_model_states.pt")):
        state = torch.load(path, map_location="cpu", weights_only=False)
        info = state.get(UNIVERSAL_CHECKPOINT_INFO)
        if info is None:
            raise CheckpointError(f"{path} has no {UNIVERSAL_CHECKPOINT_INFO}: it was saved before checkpoints "
                                  "carried it, or by the whole-model engine (ZeRO-2/3), which universal "
                                  "checkpoints do not cover")
        for group in state.get(PARAM_SHAPES) or []:
            names.update(group)
    return names, info


def shape_problem(tag_dir: Path, expected: dict[str, tuple[int, ...]]) -> str | None:
    """How the universal checkpoint in `tag_dir` differs from a model with `expected` parameter
    shapes (`ModelSpec.pipeline_parameter_shapes`), or None; tensors are memory-mapped, not read."""
    zero = tag_dir / "zero"
    found = {path.name for path in zero.iterdir() if path.is_dir()}
    if found != set(expected):
        names = sorted(set(expected) ^ found)
        return f"{zero} holds other parameters than the model's (e.g. {names[0]})"
    for name, shape in expected.items():
        saved = tuple(torch.load(zero / name / "fp32.pt", mmap=True, weights_only=False)["param"].shape)
        if saved != shape:
            return f"{zero / name} has shape {saved}, the model {shape}"
    return None


def make_universal(folder: str | Path, tag: str | None = None) -> Path:
    """`folder/TAG_universal` from checkpoint `tag` of `folder` (default: the one `latest` names)."""
    folder = Path(folder)
    if read_metadata(folder).lora is not None:
        raise CheckpointError(f"{folder} holds LoRA adapters: they change layout without a universal checkpoint "
                              "(a new run with --load BASE --lora-load of them, at any TP/PP)")
    tag = tag or read_latest(folder)
    tag_dir = folder / tag
    issue = problem(tag_dir)
    if issue is not None:
        raise CheckpointError(issue)
    if not any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):  # bf16_ / fp16_ prefixes too
        raise CheckpointError(f"{tag_dir}: no ZeRO optimizer shards (*zero_pp_rank_*_optim_states.pt): universal "
                              "checkpoints are made from ZeRO-1 runs (--zero-stage 1)")
    names, _ = _parameter_names(tag_dir)
    if not names:
        raise CheckpointError(f"{tag_dir}: its model files list no parameters")
    out = folder / f"{tag}_universal"
    pointer = folder / LATEST_UNIVERSAL  # DeepSpeed's converter points it at its output folder itself
    before = pointer.read_text() if pointer.is_file() else None
    try:
        with atomic_folder(out) as tmp:
            converted = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                                        "--input_folder", str(tag_dir), "--output_folder", str(tmp)])
            if converted.returncode != 0:
                raise CheckpointError(f"deepspeed.checkpoint.ds_to_universal failed on {tag_dir} "
                                      f"(exit status {converted.returncode}; its output is above)")
            missing = [f"{name}/{state}.pt" for name in sorted(names) for state in STATES
                       if not (tmp / "zero" / name / f"{state}.pt").is_file()]
            if missing:
                raise CheckpointError(f"the universal checkpoint of {tag_dir} lacks {len(missing)} parameter "
                                      f"states, e.g. zero/{missing[0]}")
            shutil.copy2(tag_dir / PROGRESS_FILE, tmp / PROGRESS_FILE)
            write_manifest(tmp)
    except BaseException:
        if before is None:
            pointer.unlink(missing_ok=True)
        else:
            write_atomically(pointer, before)
        raise
    write_atomically(pointer, out.name)
    return out
