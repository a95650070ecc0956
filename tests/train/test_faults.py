"""Preemption and faults on CPU (torchrun, gloo): SIGTERM saves and exits so the same command
resumes onto the uninterrupted curve; SIGUSR1, the kill switch and the time limit each stop a run
with a checkpoint; a damaged checkpoint is named at load (or skipped with --checkpoint-fallback);
a killed rank takes the run down instead of hanging it, and a hung one is named."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.finetune_runs import finetune, finetune_process, scalars, tiny_model_args

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def _args(demo_dir, demo_data, iters: int) -> list[str]:
    return [*tiny_model_args(demo_dir, demo_data), "--micro-batch-size", "2", "--global-batch-size", "8",
            "--lr", "2e-3", "--train-iters", str(iters), "--num-layers", "2", "--hidden-size", "32",
            "--num-attention-heads", "4", "--eval-iters", "0", "--exit-signal-handler"]


def test_sigterm_saves_and_the_same_command_resumes_the_curve(demo_dir, demo_data, tmp_path):
    args = _args(demo_dir, demo_data, 40)  # long enough that the signal lands mid-run on a slow machine
    finetune(2, [*args, "--save", tmp_path / "whole", "--tensorboard-dir", tmp_path / "tb_whole"])
    command = [*args, "--save", tmp_path / "run", "--tensorboard-dir", tmp_path / "tb_first"]
    with finetune_process(2, command) as process:
        process.wait_for(" iteration        3/", timeout=120)
        for pid in process.workers():  # what SLURM does: every task gets the signal
            os.kill(pid, signal.SIGTERM)
        output = process.finish(timeout=120)
    assert process.returncode == 0, output
    assert "exiting at iteration" in output and "a signal" in output
    stopped_at = json.loads((tmp_path / "run" / (tmp_path / "run" / "latest").read_text() / "progress.json")
                            .read_text())["iteration"]
    assert 3 <= stopped_at < 40
    finetune(2, [*command[:-1], tmp_path / "tb_second"])  # the same command again
    whole, resumed = scalars(tmp_path / "tb_whole", "lm loss"), scalars(tmp_path / "tb_second", "lm loss")
    assert sorted(resumed) == list(range(stopped_at + 1, 41))
    assert all(resumed[i] == whole[i] for i in resumed)


def _saved(folder: Path) -> tuple[str, int]:
    """The tag `latest` names in `folder`, and the iteration its progress.json records."""
    tag = (folder / "latest").read_text()
    return tag, json.loads((folder / tag / "progress.json").read_text())["iteration"]


@pytest.mark.parametrize("stop", ["SIGUSR1", "kill switch", "time limit", "exit interval"])
def test_each_stop_condition_saves_and_exits_cleanly(demo_dir, demo_data, tmp_path, stop):
    """SIGUSR1 (with --exit-signal-handler) and a --kill-switch-path file appearing each end a
    2000-iteration run at the end of the iteration under way, --exit-duration-in-mins 0 after the
    first and --exit-interval 3 after the third: with a checkpoint of that iteration, exit status 0."""
    switch = tmp_path / "kill-switch"
    args = [*_args(demo_dir, demo_data, 2000), "--save", tmp_path / "run", "--kill-switch-path", switch]
    args += {"time limit": ["--exit-duration-in-mins", "0"], "exit interval": ["--exit-interval", "3"]}.get(stop, [])
    with finetune_process(1, args) as process:
        if stop in ("SIGUSR1", "kill switch"):
            process.wait_for(" iteration        2/", timeout=120)
            if stop == "SIGUSR1":
                (worker,) = process.workers()
                os.kill(worker, signal.SIGUSR1)
            else:
                switch.touch()
        output = process.finish(timeout=120)
    assert process.returncode == 0, output
    reason = "a signal" if stop == "SIGUSR1" else stop
    stopped_at = int(re.search(rf"exiting at iteration (\d+): {reason}\n", output).group(1))
    expected = {"time limit": 1, "exit interval": 3}.get(stop)
    assert stopped_at == expected if expected else 2 <= stopped_at < 2000
    assert _saved(tmp_path / "run") == (f"global_step{stopped_at}", stopped_at)


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


def test_sigkill_during_a_save_resumes_from_the_checkpoint_before(demo_dir, demo_data, tmp_path):
    args = [*_args(demo_dir, demo_data, 6), "--save", tmp_path / "run", "--save-interval", "2"]
    finetune(1, [*args, "--save", tmp_path / "whole", "--tensorboard-dir", tmp_path / "tb_whole"])
    killed = finetune(1, [*args, "--tensorboard-dir", tmp_path / "tb_killed"], check=False,
                      script=REPO / "tests" / "helpers" / "killed_save.py", KILL_AT_SAVE="4")
    assert killed.returncode != 0 and "exitcode  : -9" in killed.stderr
    run = tmp_path / "run"
    assert (run / "global_step4" / "progress.json").is_file()  # the half-written save is there ...
    assert (run / "latest").read_text() == "global_step2"  # ... and never the one `latest` names
    resumed = finetune(1, [*args, "--tensorboard-dir", tmp_path / "tb_resumed"])  # the same command
    assert "training from iteration 2 to 6" in resumed.stdout
    whole, again = scalars(tmp_path / "tb_whole", "lm loss"), scalars(tmp_path / "tb_resumed", "lm loss")
    assert sorted(again) == [3, 4, 5, 6] and all(again[i] == whole[i] for i in again)
    assert (run / "latest").read_text() == "global_step6" and (run / "global_step4" / "manifest.json").is_file()


def _rank_of(pid: int) -> int:
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environment if v.startswith(b"RANK=")).split(b"=")[1])


def test_a_killed_rank_takes_the_run_down_through_torchrun(demo_dir, demo_data, tmp_path):
    """A SIGKILLed rank ends the whole run within seconds, torchrun naming it. What this proves is
    mostly torchrun's teardown (it stops the other ranks once one exits): naming a rank that is
    gone but not reported by a launcher is the heartbeat's job, proven by the hung-rank test."""
    with finetune_process(2, [*_args(demo_dir, demo_data, 2000), "--distributed-timeout-minutes", "1"]) as process:
        process.wait_for(" iteration        2/", timeout=120)
        killed_at = time.time()
        rank1 = next(pid for pid in process.workers() if _rank_of(pid) == 1)
        os.kill(rank1, signal.SIGKILL)
        output = process.finish(timeout=90)
    assert process.returncode != 0
    assert time.time() - killed_at < 90
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: -9", output), output[-3000:]


def test_a_hung_rank_is_named_and_the_others_stop_within_the_timeout(demo_dir, demo_data, tmp_path):
    """Rank 1 frozen mid-run: rank 0 names it and exits within the 15 s collective timeout (plus
    its report); the frozen rank is then killed as torchrun would kill it after its 30 s grace for
    SIGTERM (which a stopped process never acts on), and the run ends non-zero."""
    args = [*_args(demo_dir, demo_data, 2000), "--distributed-timeout-minutes", "0.25"]
    with finetune_process(2, args) as process:
        process.wait_for(" iteration        2/", timeout=120)
        frozen_at = time.time()
        rank0, rank1 = sorted(process.workers(), key=_rank_of)
        os.kill(rank1, signal.SIGSTOP)  # alive but stuck: no launcher notices, only the collectives
        process.wait_for("error: rank 0 ", timeout=15 + 45)
        while Path(f"/proc/{rank0}").exists() and time.time() - frozen_at < 15 + 45:
            time.sleep(0.2)
        waited = time.time() - frozen_at
        os.kill(rank1, signal.SIGKILL)
        output = process.finish(timeout=60)
    assert process.returncode != 0
    assert waited < 15 + 45, waited  # the timeout, the report, rank 0's exit
    assert re.search(r"error: rank 0 \(host \S+\) stopped at iteration \d+: .*no heartbeat from rank 1 "
                     r"\(host \S+, last finished iteration \d+\) for \d+s: it died or hangs", output), output[-3000:]
