#!/usr/bin/env python3
"""The steps of the prepared GPU check (`bench/gpu_check.sh` sets up the environment and runs
this), in order, each under its own time limit inside one overall budget, so one hang cannot eat
a short GPU loan; the report (`gpu_report.json`, `gpu_report.md` and each step's output) is
rewritten after every step, so what finished is kept when time runs out:

  1. gpu_tests: `pytest -m gpu` (FlexAttention forward and backward, the Triton attention kernel
     in bf16 and fp16, the chunked LM head loss in bf16, the compiled fusions, fp16's loss scale);
  2. finetune_bf16, finetune_fp16: `finetune_xp3.py` on one GPU (NCCL, one process), a random
     BLOOM-560m-shaped model (24 layers, hidden 1024, 16 heads, 250,880 vocabulary rows) on packed
     rows of 2,048 tokens, 30 iterations each, BLOOMZ's dropouts, the fused paths on (the defaults
     on a GPU), fp16 with DeepSpeed's dynamic loss scaling: losses, loss scale, tokens/s, target
     tokens/s, TFLOPs, MFU, peak memory;
  3. train_step: `bench/train_step.py` for the 560m shape in bf16 (ours fused / ours reference /
     transformers padded, then `bench/lm_head.py`'s LM head + loss alone, then attention against
     the sequence length); the 1b7 shape was dropped to make room for the next step (a second
     BLOOM size says least about what is new);
  4. train_step_llama: the same for Llama-3.2-1B's shape (16 layers, hidden 2048, 32 heads over 8
     KV heads, SwiGLU 8192, vocabulary 128,256, tied), against `LlamaForCausalLM`.

The fp16 run takes the BLOOMZ recipes' loss scaling (`examples/slurm/ds_config_bloomz-560m.json`).
A step that runs out of its time is killed with every process it started. `--rehearse` runs the
same steps on CPU with tiny shapes (fp16 is skipped: DeepSpeed has no fp16 on CPU), which
`tests/bench/test_bench.py` does in `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_FIELDS = {  # the log line's fields (megatron/train/loop.py), as floats
    "lm loss": r"lm loss ([0-9.E+-]+|nan|inf)", "loss scale": r"loss scale ([0-9.]+)",
    "tokens/s": r"\| tokens/s ([0-9.]+)", "target tokens/s": r"target tokens/s ([0-9.]+)",
    "TFLOPs/device": r"TFLOPs/device ([0-9.]+)", "MFU %": r"MFU ([0-9.]+)%", "memory GiB": r"memory \(\w+\) ([0-9.]+) GiB",
    "skipped iterations": r"skipped iterations (\d+)",
}
RECIPE_FP16 = "examples/slurm/ds_config_bloomz-560m.json"


def shapes(rehearse: bool) -> dict:
    if rehearse:
        return {"model": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"],
                "seq": "128", "micro": "2", "global": "4", "iters": "6", "log": "2", "rows": "600",
                "train_step": ["--model", "tiny", "--steps", "1", "--dtype", "fp32", "--seq-length", "128",
                               "--attention-seq-lengths", "64", "--attention-heads", "2"],
                "train_step_llama": ["--model", "llama-tiny", "--steps", "1", "--dtype", "fp32", "--seq-length", "128",
                                     "--attention-seq-lengths"]}
    return {"model": ["--num-layers", "24", "--hidden-size", "1024", "--num-attention-heads", "16",
                      "--pad-vocab-size-to", "250880"],
            "seq": "2048", "micro": "4", "global": "32", "iters": "30", "log": "10", "rows": "20000",
            "train_step": ["--model", "560m", "--steps", "5", "--attention-seq-lengths", "512", "1024", "2048", "4096"],
            "train_step_llama": ["--model", "llama-3.2-1b", "--steps", "5", "--attention-seq-lengths"]}


class Check:
    def __init__(self, out: Path, work: Path, budget: float, started: float, rehearse: bool):
        """`budget` seconds from `started` (the wall-clock time gpu_check.sh began, its install
        and build included)."""
        self.out, self.work, self.rehearse = out, work, rehearse
        self.deadline = time.monotonic() + budget - (time.time() - started)
        self.report = {"rehearsal": rehearse, "device": device_name(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                       "budget_s": budget, "steps": {}}

    def run(self, name: str, command: list[str], limit: float, log_name: str) -> tuple[str, str]:
        """Run a step's command under min(limit, what is left of the budget); its status and output."""
        left = self.deadline - time.monotonic() - 5
        if left < 20:
            self.record(name, {"status": "not run: out of time"})
            return "not run", ""
        started = time.monotonic()
        with open(self.out / log_name, "w") as log:  # kept as far as it got
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True)
            try:
                returncode = process.wait(timeout=min(limit, left))
                status = "ok" if returncode == 0 else f"failed (exit {returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too: the GPU is freed
                process.wait()
                status = f"timed out after {min(limit, left):.0f} s"
        output = (self.out / log_name).read_text(errors="replace")
        self.record(name, {"status": status, "seconds": round(time.monotonic() - started, 1), "log": log_name})
        return status, output

    def record(self, name: str, values: dict) -> None:
        self.report["steps"].setdefault(name, {}).update(values)
        (self.out / "gpu_report.json").write_text(json.dumps(self.report, indent=2) + "\n")
        (self.out / "gpu_report.md").write_text(markdown(self.report))


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU (torch {torch.__version__})"


def gpu_tests(check: Check) -> None:
    xml = check.work / "gpu_tests.xml"
    status, output = check.run("gpu_tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
                                             "--timeout", "60", "-rfEs", f"--junitxml={xml}"], 100, "gpu_tests.log")
    counts = re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", output)
    check.record("gpu_tests", {kind: int(n) for n, kind in counts}
                 | {"failures": re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)})


def prepare_data(check: Check, size: dict) -> dict[str, str] | None:
    """The demo corpus (synthetic, nothing downloaded) and its tokenizer, preprocessed."""
    data = check.work / "data"
    script = (f"{sys.executable} tools/make_demo_data.py --output-dir {data} --train-rows {size['rows']} "
              f"--valid-rows 100 --choice-examples 1 && {sys.executable} tools/preprocess_data.py --input "
              f"{data / 'xp3_demo_train.jsonl'} --json-keys inputs targets --prepend-space targets --append-eod "
              f"targets --tokenizer-name-or-path {data / 'tokenizer'} --output-prefix {data / 'train'} --workers 4 "
              "--log-interval 0")
    status, _ = check.run("data", ["bash", "-c", script], 60, "data.log")
    return {"tokenizer": str(data / "tokenizer"), "train": str(data / "train")} if status == "ok" else None


def finetune(check: Check, size: dict, data: dict | None, precision: str) -> None:
    name = f"finetune_{precision}"
    if data is None:
        check.record(name, {"status": "not run: no data"})
        return
    if check.rehearse and precision == "fp16":
        check.record(name, {"status": "skipped: DeepSpeed has no fp16 on CPU (the GPU run has it)"})
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "finetune_xp3.py",
               *size["model"], "--tokenizer-name-or-path", data["tokenizer"], "--seq-length", size["seq"],
               "--train-weighted-split-paths", f"train: 1 0:1 {data['train']}", "--micro-batch-size", size["micro"],
               "--global-batch-size", size["global"], "--train-iters", size["iters"], "--lr", "2e-5",
               "--lr-decay-style", "constant", "--optimizer", "adam", "--adam-beta2", "0.95", "--weight-decay", "1e-4",
               "--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--norm-target-loss", "--eval-iters", "0",
               "--log-interval", size["log"], "--num-workers", "2", *(["--bf16"] if precision == "bf16" else []),
               *(["--fp16", "--deepspeed_config", RECIPE_FP16] if precision == "fp16" else [])]
    status, output = check.run(name, command, 100, f"{name}.log")
    lines = [line for line in output.splitlines() if re.match(r"\s*iteration\s+\d+/", line)]
    values = {"log_lines": len(lines), "losses": [_field(line, "lm loss") for line in lines]}
    if lines:  # the last window: past compilation and autotuning
        values |= {field: _field(lines[-1], field) for field in LOG_FIELDS if field != "lm loss"}
    backend = re.search(r"attention_backend='(\w+)'.*lm_head_loss='(\w+)'.*bias_gelu_fusion=(\w+)", output)
    if backend:
        values["paths"] = f"attention {backend.group(1)}, LM head {backend.group(2)}, fusions {backend.group(3)}"
    values["warnings"] = [line.strip() for line in output.splitlines() if line.startswith("warning:")][:3]
    check.record(name, values)


def _field(line: str, field: str) -> float | None:
    match = re.search(LOG_FIELDS[field], line)
    return float(match.group(1)) if match else None


def bench(check: Check, name: str, script: str, args: list[str], limit: float) -> None:
    env_port = ["env", f"MASTER_PORT={29600 + len(check.report['steps'])}"]
    check.run(name, [*env_port, sys.executable, f"bench/{script}", *args], limit, f"{name}.txt")


def markdown(report: dict) -> str:
    lines = [f"# GPU check{' (rehearsal on CPU)' if report['rehearsal'] else ''}", "",
             f"{report['device']}; started {report['started']}; budget {report['budget_s']:.0f} s", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {step.get('status', '')} | {step.get('seconds', '')} |" for name, step in report["steps"].items()]
    tests = report["steps"].get("gpu_tests", {})
    if "passed" in tests or "failed" in tests:
        lines += ["", f"GPU tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
                      f"{tests.get('skipped', 0)} skipped" + (f"; failed: {', '.join(tests['failures'])}"
                                                              if tests.get("failures") else "")]
    runs = {name: step for name, step in report["steps"].items() if name.startswith("finetune_") and "losses" in step}
    if runs:
        fields = [f for f in LOG_FIELDS if f != "lm loss"]
        lines += ["", "| run | first / last loss | " + " | ".join(fields) + " | paths |",
                  "|---|---|" + "---|" * len(fields) + "---|"]
        for name, step in runs.items():
            losses = [x for x in step["losses"] if x is not None]
            span = f"{losses[0]:.3f} / {losses[-1]:.3f}" if losses else "n/a"
            lines.append(f"| {name} | {span} | " + " | ".join("n/a" if step.get(f) is None else f"{step[f]:g}"
                                                               for f in fields) + f" | {step.get('paths', '')} |")
        for name, step in runs.items():
            lines += [f"- {name}: {warning}" for warning in step.get("warnings", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the report and the step outputs go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_check_work"), help="scratch: data, test results")
    parser.add_argument("--budget", type=float, default=450,
                        help="seconds for everything from --started-at on (give the device run ~60 s more)")
    parser.add_argument("--started-at", type=float, default=None, help="wall-clock start (default: now)")
    parser.add_argument("--rehearse", action="store_true", help="tiny shapes on CPU")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.work, args.budget, args.started_at or time.time(), args.rehearse)
    size = shapes(args.rehearse)
    gpu_tests(check)
    data = prepare_data(check, size)
    for precision in ("bf16", "fp16"):
        finetune(check, size, data, precision)
    bench(check, "train_step", "train_step.py", size["train_step"], 135)
    bench(check, "train_step_llama", "train_step.py", size["train_step_llama"], 115)
    print((args.out / "gpu_report.md").read_text())
    steps = check.report["steps"].values()
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped") for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
