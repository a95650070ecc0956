"""The repository, the reference data written by the original Megatron-DeepSpeed tools, and a
runner for the project's CLI tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = Path(
    os.environ.get("XP3_REFERENCE_DATA", REPO.parent / "shared" / "reference-data")
) / "megatron-deepspeed"


def run_tool(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `tools/<script>` as a user would, returning its completed process."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr}")
    return result
