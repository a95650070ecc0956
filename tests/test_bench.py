"""The training-step benchmark runs end to end on what is here (a CPU smoke run: nothing is
timed or compared, only that every version and section reports), so it is ready for a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO
from megatron_test_utils import free_port


def test_train_step_benchmark_reports_every_version():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_step.py"), "--model", "tiny", "--steps", "1",
         "--dtype", "fp32", "--seq-length", "128"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "MASTER_PORT": str(free_port())},
    )
    assert result.returncode == 0, result.stderr
    for line in ("(a) ours, fused ", "(b) ours, reference path ", "(c) transformers, padded ",
                 "(a) ours, fused / (c) transformers, padded: target tokens/s x",
                 "LM head + loss alone", "  chunked ", "  reference "):
        assert line in result.stdout, (line, result.stdout)
