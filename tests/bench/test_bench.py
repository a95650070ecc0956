"""The step benchmarks run end to end on what is here (CPU smoke runs: nothing is timed or
compared, only that every version and section reports), so they are ready for a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.paths import REPO
from helpers.distributed import free_port


def _bench(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "MASTER_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_train_step_benchmark_reports_every_version():
    out = _bench("train_step.py", "--model", "tiny", "--steps", "1", "--dtype", "fp32", "--seq-length", "128",
                 "--attention-seq-lengths", "64", "--attention-heads", "2")
    for line in ("(a) ours, fused ", "(b) ours, reference path ", "(c) transformers, padded ",
                 "reference ms", "triton ms", "triton speed-up",
                 "(a) ours, fused / (c) transformers, padded: target tokens/s x",
                 "LM head + loss alone", "  chunked ", "  reference "):
        assert line in out, (line, out)


@pytest.mark.slow
def test_lm_head_benchmark_reports_both_methods_and_their_ratio():
    out = _bench("lm_head.py", "--hidden-size", "64", "--vocab-size", "50000", "--rows", "1", "--seq-length", "512",
                 "--dtype", "fp32", "--steps", "1")
    for line in ("  chunked ", "  reference ", "chunked / reference: time "):
        assert line in out, (line, out)
