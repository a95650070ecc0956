"""The layout of a checkpoint folder, which follows Megatron-DeepSpeed's so that its checkpoints
and ours load one to one: a folder per tag (`global_stepN`) holding one file per (pipeline layer,
tensor rank), `layer_XX-model_TT-model_states.pt`, plus `mp_rank_XX_model_states.pt` per
model-parallel rank (DeepSpeed's optimizer files beside them in a training checkpoint); and in the
checkpoint folder the `latest` file naming the tag (with Megatron's
`latest_checkpointed_iteration.txt`), `bloom_config.json` (`metadata.py`)."""

from __future__ import annotations

import re
from pathlib import Path

from megatron.utils.atomic_files import write_atomically

LATEST = "latest"
LATEST_UNIVERSAL = "latest_universal"  # the universal checkpoint of a folder (DeepSpeed's name)
MEGATRON_LATEST = "latest_checkpointed_iteration.txt"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read or converted, with what is wrong and where."""


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def tag_step(name: str) -> int | None:
    """The iteration of a `global_stepN` tag; None for any other name."""
    match = re.fullmatch(r"global_step(\d+)", name)
    return int(match.group(1)) if match else None


def layer_file(folder: str | Path, layer: int, tp_rank: int) -> Path:
    return Path(folder) / f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt"


def model_states_file(folder: str | Path, mp_rank: int) -> Path:
    return Path(folder) / f"mp_rank_{mp_rank:02d}_model_states.pt"


def has_checkpoint(folder: str | Path | None) -> bool:
    """Whether `folder` holds a checkpoint (its `latest` pointer)."""
    return folder is not None and (Path(folder) / LATEST).is_file()


def read_latest(folder: str | Path, pointer: str = LATEST) -> str:
    """The tag `latest` (or `pointer`, e.g. `LATEST_UNIVERSAL`) names."""
    path = Path(folder) / pointer
    if not path.is_file():
        what = ("no universal checkpoint: make one with tools/convert_checkpoint/to_universal.py"
                if pointer == LATEST_UNIVERSAL else "not a checkpoint of this project")
        raise CheckpointError(f"{folder}: no {pointer} ({what})")
    return path.read_text().strip()


def write_latest(folder: str | Path, tag: str, iteration: int | None = None) -> None:
    """Point `latest` at `tag` (and, with `iteration`, Megatron's iteration file), each by an
    atomic rename: the last step of a save."""
    write_atomically(Path(folder) / LATEST, tag)
    if iteration is not None:
        write_atomically(Path(folder) / MEGATRON_LATEST, str(iteration))
