"""Running `finetune_xp3.py` as users do (torchrun, gloo, several processes) on the preprocessed
demo corpus, and reading back what a run reported to TensorBoard."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from helpers.distributed import free_port
from helpers.paths import REPO, run_tool_in_process

from megatron.checkpoint.layout import tag_step, write_latest


def preprocess_demo(demo_dir: Path, out: Path) -> dict[str, Path]:
    """The demo fixture's train/valid jsonl as pairs datasets, as the demo preprocesses them."""
    prefixes = {}
    for split in ("train", "valid"):
        prefixes[split] = out / f"demo_{split}"
        run_tool_in_process("preprocess_data.py", "--input", demo_dir / f"{split}.jsonl", "--json-keys", "inputs",
                            "targets", "--prepend-space", "targets", "--append-eod", "targets",
                            "--tokenizer-name-or-path", demo_dir / "tokenizer", "--output-prefix", prefixes[split],
                            "--log-interval", "0")
    return prefixes


def tiny_model_args(demo_dir: Path, data: dict[str, Path], seq_length: int = 64) -> list[str]:
    return [
        "--tokenizer-name-or-path", str(demo_dir / "tokenizer"), "--seq-length", str(seq_length),
        "--train-weighted-split-paths", f"train: 1 0:1 {data['train']}",
        "--valid-weighted-split-paths", f"valid: 1 0:1 {data['valid']}",
        "--num-workers", "0", "--log-interval", "1",
    ]


FINETUNE = REPO / "finetune_xp3.py"


def launch_command(nprocs: int, args: list, script: Path = FINETUNE,
                   **env_vars: str) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line of a run and its environment."""
    env = dict(os.environ, DS_ACCELERATOR="cuda" if torch.cuda.is_available() else "cpu", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")),
               **env_vars)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nprocs),
               "--master-port", str(free_port()), str(script), *map(str, args)]
    return command, env


class RunningFinetune:
    """A started finetune whose merged output a thread reads line by line, so a test waits for
    a line or the end with a deadline and never blocks on a pipe that stays silent."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a line containing `text` appears; AssertionError (with the output) if the run
        ends or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} did not appear within {timeout}s:\n{self.output[-3000:]}")

    def finish(self, timeout: float) -> str:
        """The whole output once the run has ended (killed after `timeout` seconds)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the run did not end within {timeout}s:\n{self.output[-3000:]}") from None
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return self.output

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def workers(self) -> list[int]:
        """The pids of torchrun's worker processes."""
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in found]


@contextlib.contextmanager
def finetune_process(nprocs: int, args: list):
    """A running finetune (torchrun and its workers), stdout and stderr merged; killed if still
    running when the block ends."""
    command, env = launch_command(nprocs, args)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO, env=env)
    try:
        yield RunningFinetune(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def finetune(nprocs: int, args: list, check: bool = True, timeout: float = 600, script: Path = FINETUNE,
             **env_vars: str) -> subprocess.CompletedProcess:
    """A finetune run to its end; `script` and `env_vars` run a test's variant of finetune_xp3.py."""
    command, env = launch_command(nprocs, args, script, **env_vars)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"finetune_xp3.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def refused_before_start(args: list, capsys) -> str:
    """`finetune_xp3.main` in this process, for flags or folders that must stop it before any
    process group exists (exit status 2, a ConfigError): what it printed to stderr. A new
    interpreter per refusal would only add imports."""
    import finetune_xp3

    capsys.readouterr()
    assert finetune_xp3.main(list(map(str, args))) == 2
    return capsys.readouterr().err


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the layer files of `folder`'s latest checkpoint, by file and name."""
    tag = folder / (folder / "latest").read_text()
    return {f"{path.name}:{name}": tensor for path in sorted(tag.glob("layer_*-model_states.pt"))
            for name, tensor in torch.load(path).items() if isinstance(tensor, torch.Tensor)}


def adam_steps(folder: Path) -> int:
    """The step count of Adam's state in the latest checkpoint of `folder` (DeepSpeed's ZeRO-1
    optimizer file, any precision prefix)."""
    tag = folder / (folder / "latest").read_text()
    (optim,) = tag.glob("*optim_states.pt")
    state = torch.load(optim, weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]["state"]
    return int(next(iter(state.values()))["step"])


def copy_as_of(run: Path, tag: str, folder: Path) -> Path:
    """`folder`: the checkpoint folder `run` as it was when `tag` was its newest checkpoint (what
    a relaunch after a preemption at that point finds in --save)."""
    shutil.copytree(run, folder, ignore=lambda _, names: [n for n in names if n.startswith("global_step") and n != tag])
    write_latest(folder, tag, tag_step(tag))
    return folder


def scalars(tensorboard_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}
