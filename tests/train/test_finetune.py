"""finetune_xp3.py end to end on CPU (gloo, torchrun): every parallel layout gives the
single-process loss curve, an interrupted run resumes onto the uninterrupted curve at several
layouts, the learning rate follows Megatron's schedule, and bad settings stop before any work
(a tiny model learning a task: `test_eval_tasks.py`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.paths import run_tool_in_process
from helpers.tiny import sharpen_attention
from helpers.finetune_runs import copy_as_of, final_weights, finetune, scalars, tiny_model_args
from transformers import BloomConfig, BloomForCausalLM

from megatron.data.tokenizer import HFTokenizer
from megatron.train.arguments import parse_config
from megatron.train.errors import ConfigError
from megatron.train.lr_schedule import LRSchedule


@pytest.fixture(scope="module")
def converted_bloom(demo_dir, tmp_path_factory) -> Path:
    """A tiny random HF BLOOM over the demo tokenizer with content-dependent attention, converted
    to our checkpoint (TP1 PP1)."""
    folder = tmp_path_factory.mktemp("tiny_bloom")
    torch.manual_seed(0)
    vocab = HFTokenizer(demo_dir / "tokenizer").vocab_size
    config = BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4, hidden_dropout=0.0,
                         attention_dropout=0.0)
    model = BloomForCausalLM(config)
    sharpen_attention(model)  # attention that depends on content, so the layouts' head splits matter
    model.save_pretrained(folder / "hf")
    run_tool_in_process("convert_checkpoint/hf_to_megatron.py", "--hf-dir", folder / "hf", "--output-dir",
                        folder / "ours")
    return folder / "ours"


BASE = ["--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "2e-3", "--lr-warmup-iters", "2",
        "--lr-decay-style", "cosine", "--min-lr", "1e-4"]


# The reference path, named: the defaults pick the fused paths where a GPU is.
REFERENCE_PATH = ["--attention-backend", "reference", "--lm-head-loss", "reference", "--no-bias-gelu-fusion",
                  "--no-bias-dropout-fusion"]
TP2, PP2 = ["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]
FUSED = ["--lm-head-loss", "chunked", "--bias-gelu-fusion", "--bias-dropout-fusion"]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_layouts_give_the_single_process_loss_curve(demo_dir, demo_data, converted_bloom, tmp_path):
    """TP=2, PP=2, TP=2 x PP=2, DP=2 x TP=2 and DP=2 x PP=2 (ZeRO-1), DP=2 under ZeRO-2 and
    ZeRO-3 (whole-model engine), two of them with the chunked LM head loss (DP=2 x TP=2, and
    TP=2 x PP=2 also with the compiled bias fusions), and TP=2 with the Triton attention kernel,
    each reproduce the loss and gradient-norm curve of one process on the reference path, from the
    converted checkpoint, with clipping active."""
    common = [*tiny_model_args(demo_dir, demo_data), *BASE, "--train-iters", "6", "--load", converted_bloom,
              "--hidden-dropout", "0", "--attention-dropout", "0", "--clip-grad", "0.3", "--eval-iters", "0",
              *REFERENCE_PATH]
    layouts = {
        "single": (1, []),
        "tp2": (2, TP2),
        "pp2": (2, PP2),
        "tp2_pp2": (4, [*TP2, *PP2]),
        "dp2_tp2_chunked_head": (4, [*TP2, "--lm-head-loss", "chunked"]),
        "dp2_pp2": (4, PP2),
        "dp2_zero2": (2, ["--zero-stage", "2"]),
        "dp2_zero3": (2, ["--zero-stage", "3"]),
        "tp2_pp2_fused": (4, [*TP2, *PP2, *FUSED]),
        "tp2_triton_attention": (2, [*TP2, "--attention-backend", "triton"]),  # in Triton's interpreter on CPU
    }
    curves = {}
    for name, (nprocs, extra) in layouts.items():
        result = finetune(nprocs, [*common, *extra, "--tensorboard-dir", tmp_path / name])
        if name == "dp2_tp2_chunked_head":
            assert "TP=2 PP=1 DP=2" in result.stdout
        curves[name] = (scalars(tmp_path / name, "lm loss"), scalars(tmp_path / name, "grad-norm"))
    losses, norms = curves.pop("single")
    assert len(losses) == 6 and min(norms.values()) > 0.3  # clipping was at work
    for name, (layout_losses, layout_norms) in curves.items():
        for step, loss in losses.items():
            assert layout_losses[step] == pytest.approx(loss, rel=2e-6, abs=0), (name, step)
            assert layout_norms[step] == pytest.approx(norms[step], rel=1e-4), (name, step)


def megatron_lr(iteration: int, lr: float, min_lr: float, warmup: int, decay: int, style: str) -> float:
    """Megatron's learning rate after `iteration` applied steps (warmup and decay in steps):
    linear warmup from 0, then constant, or linear or cosine decay to `min_lr` at `decay`, then
    `min_lr`."""
    if warmup and iteration <= warmup:
        return lr * iteration / warmup
    if style == "constant":
        return lr
    if iteration > decay:
        return min_lr
    ratio = (iteration - warmup) / (decay - warmup)
    coefficient = 1 - ratio if style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1)
    return min_lr + coefficient * (lr - min_lr)


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
def test_lr_schedule_follows_megatron(style):
    """The schedule, stepped one global batch (of 16 samples) per applied step, at every
    iteration through warmup (10 steps), decay (to step 100) and after it; and it is what the
    optimizer's parameter groups get."""
    args = parse_config(["--tokenizer-name-or-path", "unused", "--seq-length", "8", "--num-layers", "1",
                         "--hidden-size", "8", "--num-attention-heads", "1", "--micro-batch-size", "16",
                         "--train-iters", "120",
                         "--lr", "3e-4", "--min-lr", "3e-5", "--lr-warmup-iters", "10", "--lr-decay-iters", "100",
                         "--lr-decay-style", style, "--data-path", "unused"], world_size=1)
    schedule = LRSchedule(args.optimizer, args.batch.global_batch)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for step in range(121):
        expected = megatron_lr(step, 3e-4, 3e-5, 10, 100, style)
        assert schedule.apply(optimizer) == pytest.approx(expected, rel=1e-12, abs=1e-18), step
        assert optimizer.param_groups[0]["lr"] == schedule.lr()
        schedule.step()
    assert megatron_lr(55, 3e-4, 3e-5, 10, 100, "cosine") == pytest.approx(3e-5 + 0.5 * 2.7e-4)  # halfway


RESUME_LAYOUTS = {  # eager dropout: tp2 and the whole-model layouts
    "pp2_compiled_dropout": (2, [*PP2, "--bias-dropout-fusion", "--num-workers", "2"]),
    "tp2": (2, TP2),
    "dp2_zero2": (2, ["--zero-stage", "2"]),
    "dp2_zero3": (2, ["--zero-stage", "3"]),
}


@pytest.mark.parametrize("layout", RESUME_LAYOUTS)
@pytest.mark.multiprocess
@pytest.mark.slow
def test_interrupted_run_resumes_onto_the_same_curve(demo_dir, demo_data, tmp_path, layout):
    """With dropout on (RNG states matter; eager or compiled hidden dropout; TP ranks with their
    own generator) and activation recomputation: a relaunch from the checkpoint of iteration 4
    gives iterations 5..8 of the uninterrupted run bit for bit, and the same final weights; its
    learning rates follow Megatron's formula. Without the saved RNG states (--no-load-rng) the
    curve departs at once: the comparison sees the dropout masks."""
    nprocs, extra = RESUME_LAYOUTS[layout]
    common = [*tiny_model_args(demo_dir, demo_data), *BASE, "--train-iters", "8",
              "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
              "--eval-iters", "1", "--eval-interval", "4", "--checkpoint-activations", "--save-interval", "4",
              *REFERENCE_PATH, *extra]
    finetune(nprocs, [*common, "--save", tmp_path / "whole", "--tensorboard-dir", tmp_path / "tb_whole"])
    copy_as_of(tmp_path / "whole", "global_step4", tmp_path / "split")
    progress = json.loads((tmp_path / "split" / "global_step4" / "progress.json").read_text())
    assert progress["iteration"] == 4 and progress["consumed_samples"] == 32
    second = finetune(nprocs, [*common, "--save", tmp_path / "split", "--tensorboard-dir", tmp_path / "tb_second"])
    assert "training from iteration 4 to 8" in second.stdout
    whole = scalars(tmp_path / "tb_whole", "lm loss")
    resumed = scalars(tmp_path / "tb_second", "lm loss")
    assert sorted(resumed) == [5, 6, 7, 8]
    assert [resumed[i] for i in range(5, 9)] == [whole[i] for i in range(5, 9)]
    final, expected = final_weights(tmp_path / "split"), final_weights(tmp_path / "whole")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    lrs = scalars(tmp_path / "tb_whole", "learning-rate")  # iteration i runs at the LR after i - 1 steps
    assert lrs == pytest.approx({i: megatron_lr(i - 1, 2e-3, 1e-4, 2, 8, "cosine") for i in range(1, 9)},
                                rel=1e-6, abs=1e-12)
    assert scalars(tmp_path / "tb_second", "learning-rate") == {i: v for i, v in lrs.items() if i > 4}
    assert scalars(tmp_path / "tb_second", "lm-loss-validation/valid")[8] == \
        scalars(tmp_path / "tb_whole", "lm-loss-validation/valid")[8]
    if layout == "tp2":
        copy_as_of(tmp_path / "whole", "global_step4", tmp_path / "no_rng")
        finetune(nprocs, [*common, "--save", tmp_path / "no_rng", "--no-load-rng", "--train-iters", "5",
                          "--tensorboard-dir", tmp_path / "tb_no_rng"])
        assert scalars(tmp_path / "tb_no_rng", "lm loss")[5] != whole[5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (DeepSpeed has no fp16 on CPU)")
def test_fp16_reports_deepspeeds_loss_scale_and_warns_at_its_minimum(demo_dir, demo_data, tmp_path):
    """One GPU, fp16 on the pipeline engine, the scale started at its minimum (2^0): the log line
    and TensorBoard carry DeepSpeed's loss scale, and each log line's warning says it is at the
    minimum (the GPU check's fp16 run shows a scale above it)."""
    (tmp_path / "ds.json").write_text(json.dumps({"fp16": {"enabled": True, "loss_scale": 0, "min_loss_scale": 1,
                                                           "initial_scale_power": 0, "hysteresis": 2}}))
    result = finetune(1, [*tiny_model_args(demo_dir, demo_data), *BASE, "--train-iters", "2", "--num-layers", "2",
                          "--hidden-size", "64", "--num-attention-heads", "4", "--eval-iters", "0", "--fp16",
                          "--deepspeed_config", tmp_path / "ds.json", "--tensorboard-dir", tmp_path / "tb"])
    assert scalars(tmp_path / "tb", "loss-scale") == {1: 1.0, 2: 1.0}
    line = next(line for line in result.stdout.splitlines() if " iteration        1/" in line)
    assert "| lm loss " in line and " | loss scale 1.0 | grad norm " in line
    assert result.stdout.count("the fp16 loss scale is at DeepSpeed's minimum (1, fp16.min_loss_scale)") == 2


@pytest.mark.multiprocess
@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_or_skips_its_step(demo_dir, demo_data, tmp_path):
    """A learning rate that blows the weights up: the NaN loss is reported with its iteration;
    by default the run stops without saving, with --nonfinite-loss skip the steps are skipped."""
    args = [*tiny_model_args(demo_dir, demo_data), *BASE, "--lr", "1e30", "--lr-warmup-iters", "0",
            "--clip-grad", "0", "--train-iters", "3", "--num-layers", "1", "--hidden-size", "16",
            "--num-attention-heads", "2", "--eval-iters", "0"]
    stopped = finetune(1, [*args, "--save", tmp_path / "stopped"], check=False)
    assert stopped.returncode == 1
    assert "error: iteration 2: the loss is nan" in stopped.stderr
    assert not (tmp_path / "stopped" / "latest").exists()
    skipped = finetune(1, [*args, "--nonfinite-loss", "skip", "--tensorboard-dir", tmp_path / "tb"])
    assert "iteration 2: the loss is nan; its optimizer step was skipped" in skipped.stdout
    assert scalars(tmp_path / "tb", "skipped-iterations")[3] == 2


def _bloomz_script_flags(tmp_path: Path, dry_run: bool = True) -> list[str]:
    """The flags of a BLOOMZ launch script (bigscience tr13f), as written there; planned here as a
    dry run (a launch of them needs a GPU: --fp16)."""
    (tmp_path / "train.txt").write_text('"train: 1 0:1 data/xp3_en"')
    (tmp_path / "valid.txt").write_text('"valid_en: 1 0:1 data/xp3_en_valid" "valid_fr: 1 0:1 data/xp3_fr_valid"')
    (tmp_path / "ds_config.json").write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 1, "train_batch_size": 2048, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 1}, "fp16": {"enabled": True, "loss_scale": 0,
                                                    "loss_scale_window": 500, "hysteresis": 2,
                                                    "min_loss_scale": 1, "initial_scale_power": 12},
        "steps_per_print": 2000, "wall_clock_breakdown": False}))
    return ("--tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --num-layers 30 "
            "--hidden-size 4096 --num-attention-heads 32 --seq-length 2048 --max-position-embeddings 2048 "
            "--position-embedding-type alibi --micro-batch-size 1 --global-batch-size 2048 "
            "--train-samples 6348800 --tokenizer-type PretrainedFromHF --tokenizer-name-or-path bloom "
            "--init-method-std 0.0048 --embed-layernorm --fp16 --seed 42 --checkpoint-activations "
            "--abort-on-unmet-fused-kernel-constraints --kill-switch-path /tmp/kill --pad-vocab-size-to 250880 "
            "--norm-target-loss --reset-progress --no-load-optim --optimizer adam --adam-beta1 0.9 "
            "--adam-beta2 0.95 --adam-eps 1e-8 --lr 2e-5 --lr-decay-style constant --lr-warmup-samples 0 "
            "--clip-grad 1.0 --weight-decay 1e-4 --log-interval 1 --save-interval 250 --eval-interval 250 "
            "--eval-iters 10 --tensorboard-dir tb --tensorboard-queue-size 5 --log-timers-to-tensorboard "
            "--log-batch-size-to-tensorboard --log-validation-ppl-to-tensorboard --save ckpt --load ckpt "
            f"--train-weighted-split-paths-path {tmp_path}/train.txt "
            f"--valid-weighted-split-paths-path {tmp_path}/valid.txt "
            "--dataloader-type single --data-impl mmap --pp-partition-method type:transformer|embedding "
            "--sync-tp-duplicated-parameters --universal-checkpoint --deepspeed "
            f"--deepspeed_config {tmp_path}/ds_config.json --zero-stage 1 "
            "--deepspeed-activation-checkpointing").split() + (["--dry-run"] if dry_run else [])


def test_bloomz_launch_script_flags_parse_as_written(tmp_path):
    config = parse_config(_bloomz_script_flags(tmp_path), world_size=64)
    assert (config.parallel.data, config.batch.gradient_accumulation) == (64, 32)
    assert config.precision == "fp16" and config.parallel.zero_stage == 1
    assert [group.name for group in config.data.valid] == ["valid_en", "valid_fr"]
    assert config.train_iters == 6348800 // 2048 and config.optimizer.beta2 == 0.95


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs fp16")
def test_fp16_without_a_gpu_stops_at_the_flags(tmp_path):
    with pytest.raises(ConfigError, match=r"--fp16 needs a GPU \(DeepSpeed has no fp16 on CPU\): pass --bf16"):
        parse_config(_bloomz_script_flags(tmp_path, dry_run=False), world_size=64)


@pytest.mark.parametrize("change, message", [
    (["--global-batch-size", "100"], "--global-batch-size 100 is not divisible by --micro-batch-size 1 x data-parallel size 64"),
    (["--tensor-model-parallel-size", "3"], "not divisible by --tensor-model-parallel-size 3"),
    (["--tensor-model-parallel-size", "64", "--global-batch-size", "64"], "does not divide --num-attention-heads 32"),
    (["--pipeline-model-parallel-size", "2", "--zero-stage", "2"], "ZeRO stage 2 does not work with pipeline"),
    (["--bf16"], "argument --bf16: not allowed with argument --fp16"),
    (["--clip-grad", "0.5"], "sets gradient_clipping=1.0 but the flags give 0.5 (--clip-grad)"),
    (["--lr-warmup-samples", "5", "--lr-warmup-iters", "10"], "give --lr-warmup-iters or --lr-warmup-samples, not both"),
])
def test_conflicting_settings_stop_before_any_work(tmp_path, capsys, change, message):
    from megatron.train.deepspeed_config import deepspeed_config

    argv = _bloomz_script_flags(tmp_path) + change
    with pytest.raises((ConfigError, SystemExit)) as error:
        deepspeed_config(parse_config(argv, world_size=64))
    text = str(error.value) if error.type is ConfigError else capsys.readouterr().err
    assert message in text


@pytest.mark.multiprocess
@pytest.mark.slow
def test_wandb_flags_without_a_project_stop_at_the_flags(tmp_path):
    with pytest.raises(ConfigError, match="--wandb-exp-name, --wandb-save-dir and --wandb-entity need --wandb-project"):
        parse_config([*_bloomz_script_flags(tmp_path, dry_run=False), "--wandb-exp-name", "bloomz"], world_size=64)


def test_bad_flags_stop_every_rank_with_a_message_before_distributed_start(demo_dir, demo_data, tmp_path):
    """torchrun starts both workers; each checks the flags and exits with status 2 (a ConfigError)
    before any process group, model or data exists."""
    result = finetune(2, [*tiny_model_args(demo_dir, demo_data), "--micro-batch-size", "3", "--global-batch-size", "8",
                          "--train-iters", "2", "--lr", "1e-3", "--num-layers", "1", "--hidden-size", "16",
                          "--num-attention-heads", "2"], check=False)
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr
    assert "--global-batch-size 8 is not divisible by --micro-batch-size 3 x data-parallel size 2" in result.stderr
    assert "training from" not in result.stdout
