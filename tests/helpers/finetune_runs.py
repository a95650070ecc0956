"""Running `finetune_xp3.py` as users do (torchrun, gloo, several processes) on the preprocessed
demo corpus, and reading back what a run reported to TensorBoard."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from helpers.distributed import free_port

from helpers.paths import REPO, run_tool


def preprocess_demo(demo_dir: Path, out: Path) -> dict[str, Path]:
    """The demo fixture's train/valid jsonl as pairs datasets, as the demo preprocesses them."""
    prefixes = {}
    for split in ("train", "valid"):
        prefixes[split] = out / f"demo_{split}"
        run_tool("preprocess_data.py", "--input", demo_dir / f"{split}.jsonl", "--json-keys", "inputs", "targets",
                 "--prepend-space", "targets", "--append-eod", "targets",
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


def _command(nprocs: int, args: list, script: Path = FINETUNE, **env_vars: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")),
               **env_vars)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nprocs),
               "--master-port", str(free_port()), str(script), *map(str, args)]
    return command, env


@contextlib.contextmanager
def finetune_process(nprocs: int, args: list):
    """A running finetune (torchrun and its workers), stdout and stderr merged; killed if still
    running when the block ends."""
    command, env = _command(nprocs, args)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def finetune(nprocs: int, args: list, check: bool = True, timeout: float = 600, script: Path = FINETUNE,
             **env_vars: str) -> subprocess.CompletedProcess:
    """A finetune run to its end; `script` and `env_vars` run a test's variant of finetune_xp3.py."""
    command, env = _command(nprocs, args, script, **env_vars)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"finetune_xp3.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def scalars(tensorboard_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}
