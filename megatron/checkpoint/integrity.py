"""Telling complete checkpoints from damaged ones. The last thing a save writes into its tag
folder, before `latest` moves, is `manifest.json`: every file's name and size. A tag folder whose
files are missing or of another size than listed there is damaged; one without a manifest but
with `progress.json` was cut off mid-save. (A converted checkpoint has neither and is taken as it
is.)"""

from __future__ import annotations

import json
from pathlib import Path

from megatron.checkpoint.layout import tag_step
from megatron.utils.atomic_files import write_atomically

MANIFEST = "manifest.json"
PROGRESS_FILE = "progress.json"


def write_manifest(tag_dir: Path) -> None:
    sizes = {p.name: p.stat().st_size for p in sorted(tag_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_atomically(tag_dir / MANIFEST, json.dumps(sizes, indent=1))


def problem(tag_dir: Path) -> str | None:
    """What is wrong with the checkpoint in `tag_dir`, or None when it is complete."""
    if not tag_dir.is_dir():
        return f"{tag_dir} does not exist"
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return f"{tag_dir} was not completely saved (no {MANIFEST})" if (tag_dir / PROGRESS_FILE).is_file() else None
    for name, size in json.loads(manifest.read_text()).items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is truncated or damaged ({path.stat().st_size} bytes, {size} saved)"
    return None


def newest_complete_tag(folder: Path, before: str) -> str | None:
    """The newest `global_stepN` tag in `folder` older than `before` that is complete."""
    def step(name: str) -> int:
        number = tag_step(name)
        return -1 if number is None else number

    limit = step(before)
    candidates = sorted((p.name for p in folder.iterdir() if 0 <= step(p.name) < limit), key=step, reverse=True)
    return next((tag for tag in candidates if problem(folder / tag) is None), None)
