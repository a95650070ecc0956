"""Telling complete checkpoints from damaged ones. The last thing a save writes into its tag
folder, before `latest` moves, is `manifest.json`: every file's name, size and xxh3 checksum
(`{"name": {"size": n, "xxh3": hex}}`; manifests of older saves hold sizes alone, `{"name": n}`,
and still load). A tag folder whose files are missing or of another size than listed there is
damaged (`problem`, which reads no file); a file whose checksum differs has flipped bits
(`checksum_problem`, which reads them); one without a manifest but with `progress.json` was cut off
mid-save. (A converted checkpoint has neither and is taken as it is.)"""

from __future__ import annotations

import json
from pathlib import Path

import xxhash

from megatron.checkpoint.layout import tag_step
from megatron.utils.atomic_files import write_atomically

MANIFEST = "manifest.json"
PROGRESS_FILE = "progress.json"
CHECKSUM = "xxh3"
CHUNK = 16 * 2**20


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file's bytes, read in chunks (several GiB/s: the disk is the limit)."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def saved_files(tag_dir: Path) -> list[str]:
    """The files of a tag folder a manifest lists (all but the manifest), sorted."""
    return sorted(p.name for p in tag_dir.iterdir() if p.is_file() and p.name != MANIFEST)


def write_manifest(tag_dir: Path, checksums: dict[str, str] | None = None) -> None:
    """Every file's size, and its checksum where `checksums` has it."""
    entries = {}
    for name in saved_files(tag_dir):
        size = (tag_dir / name).stat().st_size
        entries[name] = {"size": size, CHECKSUM: checksums[name]} if checksums and name in checksums else size
    write_atomically(tag_dir / MANIFEST, json.dumps(entries, indent=1))


def _manifest(tag_dir: Path) -> dict[str, tuple[int, str | None]]:
    """name -> (size, checksum or None) from either manifest format."""
    entries = json.loads((tag_dir / MANIFEST).read_text())
    return {name: (e["size"], e.get(CHECKSUM)) if isinstance(e, dict) else (e, None) for name, e in entries.items()}


def checksum_problem(tag_dir: Path, names: list[str]) -> str | None:
    """The first of `names` (files the manifest lists) whose bytes are not those saved, or None;
    files saved without a checksum are taken as they are."""
    if not (tag_dir / MANIFEST).is_file():
        return None
    entries = _manifest(tag_dir)
    for name in names:
        saved = entries.get(name, (None, None))[1]
        if saved is not None and (actual := file_checksum(tag_dir / name)) != saved:
            return f"{tag_dir / name} is damaged: its {CHECKSUM} checksum is {actual}, {saved} when saved"
    return None


def listed_files(tag_dir: Path) -> list[str]:
    """The files a tag folder's manifest lists (none without one), sorted."""
    return sorted(_manifest(tag_dir)) if (tag_dir / MANIFEST).is_file() else []


def problem(tag_dir: Path) -> str | None:
    """What is wrong with the checkpoint in `tag_dir`, or None when it is complete."""
    if not tag_dir.is_dir():
        return f"{tag_dir} does not exist"
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return f"{tag_dir} was not completely saved (no {MANIFEST})" if (tag_dir / PROGRESS_FILE).is_file() else None
    for name, (size, _) in _manifest(tag_dir).items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is truncated or damaged ({path.stat().st_size} bytes, {size} saved)"
    return None


def newest_complete_tag(folder: Path, before: str) -> str | None:
    """The newest `global_stepN` tag in `folder` older than `before` that is complete (by sizes:
    checksums are checked when it is loaded)."""
    def step(name: str) -> int:
        number = tag_step(name)
        return -1 if number is None else number

    limit = step(before)
    candidates = sorted((p.name for p in folder.iterdir() if 0 <= step(p.name) < limit), key=step, reverse=True)
    return next((tag for tag in candidates if problem(folder / tag) is None), None)
