"""The prepared GPU check, proved on CPU before any GPU runs it: `bench/gpu_check.sh --rehearse`
runs every step end to end with tiny shapes (the GPU-marked tests, skipped here; a finetune; the
step benchmark with each version and section, LoRA against the full finetune and the LM head alone
among them, for BLOOM and for the Llama family) and writes its report; `make gpu-wheelhouse`'s builder collects the wheels the GPU machine lacks (from the
package registry), under the size the `device` tool carries, with their manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
from helpers.paths import REPO


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_gpu_check_rehearses_every_step_and_writes_its_report(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--rehearse"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "gpu_report.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["gpu_tests", "data", "finetune_bf16", "finetune_fp16", "train_step", "train_step_llama"]
    assert all(steps[name]["status"] == "ok"
               for name in ("gpu_tests", "data", "finetune_bf16", "train_step", "train_step_llama"))
    assert steps["finetune_fp16"]["status"].startswith("skipped: DeepSpeed has no fp16 on CPU")
    assert steps["gpu_tests"]["skipped"] >= 18 and steps["gpu_tests"].get("failed", 0) == 0  # collected, skipped here
    run = steps["finetune_bf16"]
    assert run["log_lines"] == 3 and all(loss is not None for loss in run["losses"])
    assert run["tokens/s"] > 0 and run["target tokens/s"] > 0 and run["memory GiB"] > 0
    assert run["skipped iterations"] == 0 and run["loss scale"] is None
    train_step = (out / "train_step.txt").read_text()
    for line in ("(a) ours, fused ", "(b) ours, reference path ", "(c) transformers, padded ",
                 "(d) ours, fused, LoRA r16 ", "LoRA r16 / full ((d) / (a)): step time x",
                 "reference ms", "triton ms", "triton speed-up",
                 "(a) ours, fused / (c) transformers, padded: target tokens/s x",
                 "LM head + loss alone", "  chunked ", "  reference ", "chunked / reference: time "):
        assert line in train_step, (line, train_step)
    llama = (out / "train_step_llama.txt").read_text()
    assert "llama-tiny (llama): 2 layers, hidden 64, 4 heads over 2 KV heads" in llama
    assert "(a) ours, fused / (c) transformers, padded: target tokens/s x" in llama and "attention alone" not in llama
    assert "LoRA r16 / full ((d) / (a)): step time x" in llama
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    table = (out / "gpu_report.md").read_text()
    assert "| finetune_bf16 | 7." in table and "| train_step | ok |" in table
    assert table in result.stdout  # printed at the end


@pytest.mark.slow
def test_the_gpu_wheelhouse_holds_what_the_gpu_machine_lacks(tmp_path):
    result = subprocess.run([sys.executable, "bench/gpu_wheelhouse.py", "--output-dir", tmp_path / "wheels"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "wheels" / "MANIFEST.json").read_text())
    names = {entry["name"]: entry for entry in manifest["wheels"]}
    assert {"deepspeed", "megatron-core", "transformers", "pydantic", "pydantic-core", "hjson"} <= set(names)
    assert manifest["total_bytes"] < 60 * 2**20
    assert names["deepspeed"]["file"].endswith("-py3-none-any.whl")
    assert "-cp312-cp312-manylinux" in names["megatron-core"]["file"] and "-cp312-" in names["pydantic-core"]["file"]
    for entry in manifest["wheels"]:
        wheel = tmp_path / "wheels" / entry["file"]
        assert wheel.stat().st_size == entry["bytes"]
        with zipfile.ZipFile(wheel) as archive:  # a whole wheel
            assert any(name.endswith(".dist-info/METADATA") for name in archive.namelist())
