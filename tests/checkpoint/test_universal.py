"""A run moved to another layout with its optimizer state, on DeepSpeed's universal checkpoints
(torchrun, gloo, real DeepSpeed and its `ds_to_universal`): a TP2 x PP2 run's checkpoint of
iteration 4, made universal, resumes at TP1 x PP2 x DP2 and at TP2 x PP1 x DP2 on the uninterrupted
curve, and a DP2 checkpoint of that resume at DP1; without the Adam moments the curve departs;
a layout with a larger vocabulary padding loads; layer files hold exactly Megatron-DeepSpeed's
tensors; bad folders are named before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.finetune_runs import (adam_steps, copy_as_of, finetune, refused_before_start, scalars,
                                   tiny_model_args)
from helpers.paths import run_tool_in_process

from megatron.checkpoint.layer_files import CheckpointReader
from megatron.models import get_model_spec

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

TP2, PP2 = ["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]
TO_UNIVERSAL = "convert_checkpoint/to_universal.py"


@pytest.fixture(scope="module")
def whole(demo_dir, demo_data, tmp_path_factory) -> dict:
    """TP2 x PP2 (ZeRO-1, fp32, dropout 0, clipping active) for 8 iterations, saving at 4 and 8,
    and its checkpoint of iteration 4 made universal."""
    root = tmp_path_factory.mktemp("universal")
    data = demo_data
    args = [*tiny_model_args(demo_dir, data), "--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "2e-3",
            "--lr-warmup-iters", "2", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--clip-grad", "0.3", "--eval-iters", "0",
            "--zero-stage", "1", "--attention-backend", "reference", "--lm-head-loss", "reference",
            "--no-bias-gelu-fusion", "--no-bias-dropout-fusion"]
    finetune(4, [*args, *TP2, *PP2, "--train-iters", "8", "--save-interval", "4", "--save", root / "run",
                 "--tensorboard-dir", root / "tb"])
    converted = run_tool_in_process(TO_UNIVERSAL, "--checkpoint-dir", root / "run", "--tag", "global_step4")
    assert "wrote " in converted.stdout and (root / "run" / "latest_universal").read_text() == "global_step4_universal"
    return {"args": args, "run": root / "run", "tb": root / "tb", "root": root}


def _curve(tb: Path) -> dict[int, tuple[float, float]]:
    losses, norms = scalars(tb, "lm loss"), scalars(tb, "grad-norm")
    return {step: (losses[step], norms[step]) for step in losses}


def _assert_on_the_curve(resumed: dict, whole: dict, steps) -> None:
    assert sorted(resumed) == list(steps)
    for step in steps:
        assert resumed[step] == pytest.approx(whole[step], rel=1e-5), step


@pytest.mark.parametrize("nprocs, layout", [(4, PP2), (4, TP2)], ids=["tp1_pp2_dp2", "tp2_pp1_dp2"])
def test_universal_checkpoint_resumes_at_another_layout_on_the_same_curve(whole, tmp_path, nprocs, layout):
    """Iterations 5-8 (loss and gradient norm) equal the uninterrupted TP2 x PP2 run's within
    1e-5: weights, Adam moments and step, data position and LR schedule all carried over."""
    out = finetune(nprocs, [*whole["args"], *layout, "--train-iters", "8", "--load", whole["run"],
                            "--universal-checkpoint", "--save", tmp_path / "run", "--tensorboard-dir", tmp_path / "tb"])
    assert "from universal" in out.stdout and "RNG reseeded" in out.stdout
    assert "training from iteration 4 to 8 (consumed samples 32)" in out.stdout
    _assert_on_the_curve(_curve(tmp_path / "tb"), _curve(whole["tb"]), range(5, 9))
    assert (tmp_path / "run" / "latest").read_text() == "global_step8"  # a normal checkpoint again


def test_data_parallel_change_alone_and_the_moments_matter(whole, tmp_path):
    """TP1 x PP2 at DP2 from the universal checkpoint to iteration 6, made universal again, then
    at DP1 (ZeRO-1's moments re-partitioned) to 8: on the curve. The same weights without the
    moments (the normal checkpoint's layer files, --no-load-optim) depart from it."""
    until_6 = ["--train-iters", "8", "--exit-interval", "6"]  # the LR schedule of the 8-iteration run
    finetune(4, [*whole["args"], *PP2, *until_6, "--load", whole["run"], "--universal-checkpoint",
                 "--save", tmp_path / "dp2"])
    run_tool_in_process(TO_UNIVERSAL, "--checkpoint-dir", tmp_path / "dp2")
    finetune(2, [*whole["args"], *PP2, "--train-iters", "8", "--load", tmp_path / "dp2", "--universal-checkpoint",
                 "--tensorboard-dir", tmp_path / "tb_dp1"])
    curve = _curve(whole["tb"])
    _assert_on_the_curve(_curve(tmp_path / "tb_dp1"), curve, range(7, 9))
    as_of_4 = copy_as_of(whole["run"], "global_step4", tmp_path / "as_of_4")
    finetune(2, [*whole["args"], *PP2, *until_6, "--load", as_of_4, "--no-load-optim",
                 "--tensorboard-dir", tmp_path / "tb_fresh_adam"])
    fresh = _curve(tmp_path / "tb_fresh_adam")
    assert fresh[5][0] == pytest.approx(curve[5][0], rel=1e-5)  # the same weights ...
    assert fresh[6][0] != pytest.approx(curve[6][0], rel=1e-5)  # ... but a fresh Adam: off the curve


def test_a_larger_vocabulary_padding_loads(whole, tmp_path):
    """One process with `--make-vocab-size-divisible-by 384`: 1,152 rows instead of the saved 1,024;
    the trained rows load, the new ones start at zero, and training goes on."""
    finetune(1, [*whole["args"], "--make-vocab-size-divisible-by", "384", "--train-iters", "5", "--load", whole["run"],
                 "--universal-checkpoint", "--save", tmp_path / "run", "--lr", "1e-9"])
    after = CheckpointReader(tmp_path / "run", get_model_spec()).layer(1)["word_embeddings.weight"]
    before = CheckpointReader(whole["run"], get_model_spec(), "global_step4").layer(1)["word_embeddings.weight"]
    assert after.shape == (1152, 32) and before.shape == (1024, 32)
    torch.testing.assert_close(after[:1024], before, rtol=0, atol=1e-6)  # one step at LR 1e-9
    assert after[1024:].abs().max() < 1e-6


def test_a_bf16_run_converts_and_resumes(whole, tmp_path):
    """bf16 (the 176B recipe's precision): DeepSpeed names the shards `bf16_zero_pp_rank_*`; the
    checkpoint converts and its universal form resumes, with Adam's state (3 steps after 1 more),
    or with a fresh Adam under --no-load-optim (1 step)."""
    bf16 = [*whole["args"], "--bf16"]
    finetune(1, [*bf16, "--train-iters", "2", "--save", tmp_path / "run"])
    assert list((tmp_path / "run" / "global_step2").glob("bf16_zero_pp_rank_*_optim_states.pt"))
    run_tool_in_process(TO_UNIVERSAL, "--checkpoint-dir", tmp_path / "run")
    resumed = finetune(1, [*bf16, "--train-iters", "3", "--load", tmp_path / "run", "--universal-checkpoint",
                           "--tensorboard-dir", tmp_path / "tb"])
    assert "from universal" in resumed.stdout and sorted(scalars(tmp_path / "tb", "lm loss")) == [3]
    for flags, steps in (([], 3), (["--no-load-optim"], 1)):  # Adam's step count: carried over, or fresh
        finetune(1, [*bf16, "--train-iters", "3", "--load", tmp_path / "run", "--universal-checkpoint", *flags,
                     "--save", tmp_path / f"steps{steps}"])
        assert adam_steps(tmp_path / f"steps{steps}") == steps, flags


def test_layer_files_hold_exactly_megatron_deepspeeds_tensors(whole):
    spec = get_model_spec()
    tag = whole["run"] / "global_step4"
    config = CheckpointReader(whole["run"], spec).config
    files = sorted(tag.glob("layer_*-model_*-model_states.pt"))
    assert len(files) == 2 * (len(spec.adapter.parameter_layers(config.num_layers)))
    for path in files:
        layer = int(path.name.split("-")[0].removeprefix("layer_"))
        expected = spec.adapter.layer_shapes(config, spec.adapter.layer_kind(layer, config.num_layers))
        tensors = torch.load(path)
        assert set(tensors) == set(expected), path.name
        assert all(isinstance(t, torch.Tensor) for t in tensors.values()), path.name


def test_bad_folders_are_named_before_any_work(whole, tmp_path, capsys, monkeypatch):
    """--universal-checkpoint at a folder without a universal checkpoint, at a universal one
    without its per-parameter states, and at one of another model's shape stop before any process
    group, and so does a relaunch at another TP/PP without it; a damaged source checkpoint stops the conversion with nothing written and
    `latest_universal` as it was."""
    shutil.copytree(whole["run"], tmp_path / "plain", ignore=shutil.ignore_patterns("*_universal"))
    failed = refused_before_start([*whole["args"], "--train-iters", "5", "--load", tmp_path / "plain",
                                   "--universal-checkpoint"], capsys)
    assert f"{tmp_path / 'plain'}: no latest_universal" in failed
    shutil.copytree(whole["run"], tmp_path / "broken")
    shutil.rmtree(tmp_path / "broken" / "global_step4_universal" / "zero")
    failed = refused_before_start([*whole["args"], "--train-iters", "5", "--load", tmp_path / "broken",
                                   "--universal-checkpoint"], capsys)
    assert "is not a complete universal checkpoint: no zero/" in failed
    shutil.copytree(whole["run"], tmp_path / "other_model")
    meta = json.loads((tmp_path / "other_model" / "bloom_config.json").read_text())
    meta["model"]["hidden_size"] = 64  # the folder's model is not the one its universal checkpoint holds
    (tmp_path / "other_model" / "bloom_config.json").write_text(json.dumps(meta))
    failed = refused_before_start([*whole["args"], "--hidden-size", "64", "--train-iters", "5", "--load",
                                   tmp_path / "other_model", "--universal-checkpoint"], capsys)
    assert "word_embeddings.weight has shape (1024, 32), the model (1024, 64)" in failed
    monkeypatch.setenv("WORLD_SIZE", "2")  # the relaunch's two processes, as torchrun would say
    moved = refused_before_start([*whole["args"], *PP2, "--train-iters", "9", "--save", tmp_path / "plain"], capsys)
    assert "was saved at TP 2 x PP 2, this run is TP 1 x PP 2" in moved
    shard = next((tmp_path / "plain" / "global_step8").glob("zero_pp_rank_*_optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    result = run_tool_in_process(TO_UNIVERSAL, "--checkpoint-dir", tmp_path / "plain", check=False)
    assert result.returncode == 1 and f"{shard} is truncated or damaged" in result.stderr
    assert not (tmp_path / "plain" / "global_step8_universal").exists()
    assert not (tmp_path / "plain" / "latest_universal").exists()
    assert json.loads((tmp_path / "plain" / "global_step8" / "progress.json").read_text())["iteration"] == 8
