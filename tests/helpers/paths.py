"""The repository, the reference data written by the original Megatron-DeepSpeed tools, and
runners for the project's CLI tools (as a user runs them, or their `main` in this process)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from collections.abc import Callable
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


def tool_main(script: str) -> Callable[[list[str]], object]:
    """`tools/<script>`'s `main(argv)`, loaded into this process: for a tool whose work is quick
    next to the torch and transformers imports a new interpreter would pay for."""
    path = REPO / "tools" / script
    spec = importlib.util.spec_from_file_location(f"tools_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_tool_in_process(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`run_tool`'s result, from the tool's `main` in this process (its exit status, what it
    printed): the same checks without a new interpreter's imports."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = tool_main(script)(list(map(str, args))) or 0
        except SystemExit as exit:  # argparse's refusals
            status = exit.code if isinstance(exit.code, int) else 1
    result = subprocess.CompletedProcess([script, *map(str, args)], status, stdout.getvalue(), stderr.getvalue())
    if check and status != 0:
        raise AssertionError(f"{script} failed ({status}):\n{result.stderr}")
    return result
