"""Preemption and faults on CPU (torchrun, gloo): SIGTERM saves and exits so the same command
resumes onto the uninterrupted curve; a damaged checkpoint is named at load (or skipped with
--checkpoint-fallback); a killed rank takes the run down instead of hanging it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from finetune_runs import finetune, finetune_process, preprocess_demo, scalars, tiny_model_args


@pytest.fixture(scope="module")
def demo_data(demo_dir, tmp_path_factory) -> dict[str, Path]:
    return preprocess_demo(demo_dir, tmp_path_factory.mktemp("fault_data"))


def _args(demo_dir, demo_data, iters: int) -> list[str]:
    return [*tiny_model_args(demo_dir, demo_data), "--micro-batch-size", "2", "--global-batch-size", "8",
            "--lr", "2e-3", "--train-iters", str(iters), "--num-layers", "2", "--hidden-size", "32",
            "--num-attention-heads", "4", "--eval-iters", "0", "--exit-signal-handler"]


def _wait_for(process: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.time() + timeout
    for line in process.stdout:
        if text in line:
            return
        if time.time() > deadline:
            break
    raise AssertionError(f"{text!r} did not appear")


def _workers(process: subprocess.Popen) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def test_sigterm_saves_and_the_same_command_resumes_the_curve(demo_dir, demo_data, tmp_path):
    args = _args(demo_dir, demo_data, 12)
    finetune(2, [*args, "--save", tmp_path / "whole", "--tensorboard-dir", tmp_path / "tb_whole"])
    command = [*args, "--save", tmp_path / "run", "--tensorboard-dir", tmp_path / "tb_first"]
    with finetune_process(2, command) as process:
        _wait_for(process, " iteration        3/", timeout=120)
        for pid in _workers(process):  # what SLURM does: every task gets the signal
            subprocess.run(["kill", "-TERM", str(pid)])
        output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "exiting at iteration" in output and "a signal" in output
    stopped_at = json.loads((tmp_path / "run" / (tmp_path / "run" / "latest").read_text() / "progress.json")
                            .read_text())["iteration"]
    assert 3 <= stopped_at < 12
    finetune(2, [*command[:-1], tmp_path / "tb_second"])  # the same command again
    whole, resumed = scalars(tmp_path / "tb_whole", "lm loss"), scalars(tmp_path / "tb_second", "lm loss")
    assert sorted(resumed) == list(range(stopped_at + 1, 13))
    assert all(resumed[i] == whole[i] for i in resumed)


def test_damaged_checkpoint_is_named_and_fallback_resumes_from_the_one_before(demo_dir, demo_data, tmp_path):
    args = [*_args(demo_dir, demo_data, 8), "--save", tmp_path / "run", "--save-interval", "4"]
    finetune(1, args)
    shard = next((tmp_path / "run" / "global_step8").glob("zero_pp_rank_*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    failed = finetune(1, [*args, "--train-iters", "10"], check=False)
    assert failed.returncode != 0
    assert f"{shard} is truncated or damaged" in failed.stderr
    resumed = finetune(1, [*args, "--train-iters", "10", "--checkpoint-fallback"])
    assert "falling back to global_step4" in resumed.stdout
    assert "training from iteration 4 to 10" in resumed.stdout


def test_a_killed_rank_stops_the_others(demo_dir, demo_data, tmp_path):
    with finetune_process(2, [*_args(demo_dir, demo_data, 2000), "--distributed-timeout-minutes", "1"]) as process:
        _wait_for(process, " iteration        2/", timeout=120)
        killed_at = time.time()
        subprocess.run(["kill", "-KILL", str(max(_workers(process)))])
        process.communicate(timeout=90)
    assert process.returncode != 0
    assert time.time() - killed_at < 90
