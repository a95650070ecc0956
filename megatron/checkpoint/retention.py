"""Checkpoint retention (`--save-retain N`): after a save is complete and `latest` names it, the
complete training checkpoints (`global_stepN` with a manifest) beyond the N newest are deleted,
never the one `latest` names, never a folder that is not a `global_stepN` tag (a universal
checkpoint, `TAG_universal`, is kept, and so is the tag `latest_universal`'s folder was made from
while that pointer names it), and never an incomplete one (a fallback or a person may still want to
look at it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from megatron.checkpoint.integrity import MANIFEST, problem
from megatron.checkpoint.layout import LATEST, LATEST_UNIVERSAL, tag_step


def _named(folder: Path) -> set[str]:
    """The tags the pointers name (a universal folder `TAG_universal` protects TAG too)."""
    names = set()
    for pointer in (LATEST, LATEST_UNIVERSAL):
        path = folder / pointer
        if path.is_file():
            name = path.read_text().strip()
            names |= {name, name.removesuffix("_universal")}
    return names


def prune(folder: str | Path, keep: int) -> list[str]:
    """Delete the complete checkpoints of `folder` older than its `keep` newest complete ones;
    the tags deleted, oldest first."""
    folder = Path(folder)
    complete = sorted((p for p in folder.iterdir() if p.is_dir() and tag_step(p.name) is not None
                       and (p / MANIFEST).is_file() and problem(p) is None), key=lambda p: tag_step(p.name))
    named = _named(folder)
    deleted = []
    for tag_dir in complete[:-keep] if keep < len(complete) else []:
        if tag_dir.name not in named:
            shutil.rmtree(tag_dir)
            deleted.append(tag_dir.name)
    return deleted
