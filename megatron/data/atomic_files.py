"""Small files written whole or not at all: under a temporary name in the same folder, then
renamed over the target, so a reader (or a relaunch after a kill) never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """`path` holds `text` whole or is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
