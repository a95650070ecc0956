"""The flags that change what a run starts with or reports, each run (torchrun, one CPU process):
`--no-load-optim`, `--finetune` and `--reset-progress` from a checkpoint of iteration 2 (what each
loads and what it does not); several validation groups; the log line's throughput figures against
their formulas; `--data-path` with `--split`, `--pad-vocab-size-to`, `--prefix-lm` and bf16."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers.finetune_runs import adam_steps, copy_as_of, finetune, scalars, tiny_model_args

from megatron.data.mtf_datasets import build_group
from megatron.data.tokenizer import HFTokenizer
from megatron.train.arguments import parse_config

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

MODEL = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--hidden-dropout", "0",
         "--attention-dropout", "0", "--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "2e-3",
         "--lr-warmup-iters", "2", "--lr-decay-style", "constant", "--eval-iters", "1", "--eval-interval", "2"]


def _args(demo_dir: Path, demo_data: dict[str, Path]) -> list[str]:
    """Two validation groups: the first and the second half of the validation pairs."""
    return [*tiny_model_args(demo_dir, demo_data)[:-6], "--num-workers", "0", "--log-interval", "1",
            "--valid-weighted-split-paths", f"valid_a: 1 0:0.5 {demo_data['valid']}",
            f"valid_b: 1 0.5:1 {demo_data['valid']}", *MODEL]


@pytest.fixture(scope="module")
def first_run(demo_dir, demo_data, tmp_path_factory) -> dict:
    """Four iterations from random init, checkpoints at 2 and 4, and what the run reported."""
    root = tmp_path_factory.mktemp("first_run")
    args = [*_args(demo_dir, demo_data), "--train-iters", "4", "--save-interval", "2"]
    result = finetune(1, [*args, "--save", root / "run", "--tensorboard-dir", root / "tb"])
    return {"args": args, "stdout": result.stdout, "run": root / "run", "tb": root / "tb",
            "step2": copy_as_of(root / "run", "global_step2", root / "as_of_step2")}


def _then(first_run: dict, tmp_path: Path, *flags: str, iters: int) -> tuple[str, dict[str, dict[int, float]]]:
    """A first launch with --load at the checkpoint of iteration 2 and `flags`: its output and
    its loss, learning rate and validation curves."""
    result = finetune(1, [*first_run["args"], "--load", first_run["step2"], "--save", tmp_path / "run",
                          "--train-iters", str(iters), "--tensorboard-dir", tmp_path / "tb", *flags])
    curves = {tag: scalars(tmp_path / "tb", tag) for tag in
              ("lm loss", "learning-rate", "lm-loss-validation/valid_a", "lm-loss-validation/valid_b")}
    return result.stdout, curves


def test_no_load_optim_keeps_weights_and_progress_with_a_fresh_optimizer(first_run, tmp_path):
    """Iteration 3 (the loss before its step) is the first run's: its weights, data position and
    LR; iteration 4 is not, since Adam starts again from zero moments."""
    out, curves = _then(first_run, tmp_path, "--no-load-optim", iters=4)
    assert "from weights" in out and "training from iteration 2 to 4" in out
    before = scalars(first_run["tb"], "lm loss")
    assert curves["lm loss"][3] == before[3] and curves["lm loss"][4] != before[4]
    assert curves["learning-rate"] == {i: v for i, v in scalars(first_run["tb"], "learning-rate").items() if i > 2}
    assert adam_steps(tmp_path / "run") == 2


def test_finetune_loads_the_weights_only(first_run, tmp_path):
    """The validation losses before the first step are the first run's at iteration 2 (the same
    weights); the iteration count, the data and the LR warmup start from zero, and so does Adam."""
    out, curves = _then(first_run, tmp_path, "--finetune", iters=2)
    assert "from weights" in out and "training from iteration 0 to 2" in out
    for group in ("valid_a", "valid_b"):
        assert curves[f"lm-loss-validation/{group}"][0] == scalars(first_run["tb"], f"lm-loss-validation/{group}")[2]
    assert curves["learning-rate"][1] == 0.0 and curves["lm loss"][1] != scalars(first_run["tb"], "lm loss")[1]
    assert json.loads((tmp_path / "run" / "global_step2" / "progress.json").read_text())["consumed_samples"] == 16
    assert adam_steps(tmp_path / "run") == 2


def test_reset_progress_keeps_the_optimizer_and_restarts_the_schedule(first_run, tmp_path):
    out, curves = _then(first_run, tmp_path, "--reset-progress", iters=2)
    assert "from resume" in out and "training from iteration 0 to 2" in out
    assert curves["learning-rate"][1] == 0.0
    assert adam_steps(tmp_path / "run") == 4  # two steps loaded, two taken


def test_each_validation_group_is_evaluated_and_reported(first_run):
    a, b = (scalars(first_run["tb"], f"lm-loss-validation/{group}") for group in ("valid_a", "valid_b"))
    assert sorted(a) == sorted(b) == [0, 2, 4] and all(a[i] != b[i] for i in a)
    assert sum(" validation at iteration 4 | valid_a lm loss " in line and " | valid_b lm loss " in line
               for line in first_run["stdout"].splitlines()) == 1


def test_log_line_throughput_follows_its_formulas(first_run, demo_dir):
    """tokens/s = global batch x sequence / iteration time; TFLOPs/device = Narayanan et al.'s
    72*l*h^2*(1 + s/(6h) + V/(12*l*h)) per token x tokens/s / world size; target tokens/s x
    iteration time = the loss-mask tokens of that iteration's 8 rows."""
    tb = {tag: scalars(first_run["tb"], tag) for tag in
          ("iteration-time", "tokens-per-second", "target-tokens-per-second", "tflops-per-device")}
    train = parse_config([*first_run["args"], "--save", str(first_run["run"])], world_size=1)
    tokenizer = HFTokenizer(demo_dir / "tokenizer")
    data = build_group(train.data.train, train.data.packing(train.seed), train.batch.train_samples, tokenizer.pad,
                       train.data.cache_path)
    l, h, s, v = 2, 32, 64, 1024  # the demo tokenizer's 1,024 tokens need no padding
    flops_per_token = 72 * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))
    lines = [line for line in first_run["stdout"].splitlines() if line.startswith(" iteration ")]
    for iteration in range(1, 5):
        seconds = tb["iteration-time"][iteration]
        assert tb["tokens-per-second"][iteration] == pytest.approx(8 * 64 / seconds, rel=1e-5)
        assert tb["tflops-per-device"][iteration] == pytest.approx(
            flops_per_token * tb["tokens-per-second"][iteration] / 1e12, rel=1e-5)
        targets = sum(float(data[i]["loss_mask"].sum()) for i in range(8 * (iteration - 1), 8 * iteration))
        assert tb["target-tokens-per-second"][iteration] * seconds == pytest.approx(targets, rel=1e-5)
        line = lines[iteration - 1]  # printed to 0.1 from the float64 value TensorBoard keeps as float32
        assert _printed(line, "tokens/s") == pytest.approx(tb["tokens-per-second"][iteration], abs=0.06)
        assert _printed(line, "elapsed time per iteration (ms):") == pytest.approx(1000 * seconds, abs=0.06)


def _printed(line: str, label: str) -> float:
    """The number after `label` in a log line's ` | label VALUE |` field."""
    return float(re.search(rf"\| {re.escape(label)} ([0-9.]+) \|", line).group(1))


def test_data_path_split_vocabulary_padding_prefix_lm_and_bf16(demo_dir, demo_data, tmp_path):
    """One bf16 run on --data-path with --split 90,10,0 (its `valid` group evaluated), a vocabulary
    padded to 1,100 rows by --pad-vocab-size-to, and --prefix-lm, whose attention changes the loss
    of the same run without it."""
    args = ["--tokenizer-name-or-path", demo_dir / "tokenizer", "--seq-length", "64", "--num-workers", "0",
            "--log-interval", "1", "--data-path", demo_data["train"], "--split", "90,10,0",
            "--pad-vocab-size-to", "1100", "--bf16", "--train-iters", "1", *MODEL, "--lr-warmup-iters", "0",
            "--init-method-std", "0.5"]  # attention far from uniform: the prefix-LM mask shows in the loss
    finetune(1, [*args, "--prefix-lm", "--save", tmp_path / "run", "--tensorboard-dir", tmp_path / "tb"])
    finetune(1, [*args, "--tensorboard-dir", tmp_path / "tb_causal"])
    assert sorted(scalars(tmp_path / "tb", "lm-loss-validation/valid")) == [0, 1]
    meta = json.loads((tmp_path / "run" / "bloom_config.json").read_text())
    assert meta["model"]["vocab_size"] == 1100 and meta["model"]["prefix_lm"] and meta["hf_config"]["vocab_size"] == 1024
    embedding = torch.load(tmp_path / "run" / "global_step1" / "layer_01-model_00-model_states.pt")
    assert embedding["word_embeddings.weight"].shape == (1100, 32)
    assert embedding["word_embeddings.weight"].dtype == torch.bfloat16
    assert scalars(tmp_path / "tb", "lm loss")[1] != scalars(tmp_path / "tb_causal", "lm loss")[1]
