"""A cache of index arrays (`.npy`) keyed by everything that changes them.

Each entry is a folder `{name}-{hash}/` of `.npy` files plus the `description.json` it was keyed
by, built under a temporary name and renamed into place whole. In a distributed job rank 0 builds
a missing entry while the others wait at a barrier, then every rank loads it (memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.distributed as dist

FORMAT_VERSION = 1


def entry_path(cache_dir: str | os.PathLike, name: str, description: dict) -> Path:
    text = json.dumps({"format": FORMAT_VERSION, **description}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{name}-{digest}"


def file_signature(path: str | os.PathLike) -> dict:
    """What identifies a data file's content cheaply: its size and modification time."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write(entry: Path, description: dict, arrays: dict[str, np.ndarray]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", array)
        (tmp / "description.json").write_text(json.dumps(description, indent=1, sort_keys=True))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # lost a race to an identical entry: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(entry: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, mmap_mode="r") for p in sorted(entry.glob("*.npy"))}


def cached_arrays(
    cache_dir: str | os.PathLike,
    name: str,
    description: dict,
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The arrays of the entry for `description`, built with `build()` if missing."""
    entry = entry_path(cache_dir, name, description)
    distributed = dist.is_available() and dist.is_initialized()
    if not entry.is_dir() and (not distributed or dist.get_rank() == 0):
        _write(entry, description, build())
    if distributed:
        dist.barrier()
    if not entry.is_dir():
        raise FileNotFoundError(f"{entry}: index cache entry missing after it was built")
    return _read(entry)
