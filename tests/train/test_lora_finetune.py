"""LoRA finetunes end to end on CPU (gloo, torchrun), from converted tiny HF models over the demo
tokenizer: at TP2 (a rank, 3, that TP does not divide; blocks recomputed), at PP4 (an
embedding-only first stage without adapters) and, for BLOOM, PP2 (its tied embedding on both ends)
and TP2 x DP2 under ZeRO-2 (the whole-model engine), the adapters
follow the single-process loss and gradient-norm curve; checkpoints and the optimizer hold the
adapters alone; an interrupted run resumes bit for bit (its base rebuilt from the base checkpoint:
a base that had moved during training would show); zero-shot evaluation runs on the live LoRA
model; and what LoRA refuses stops the launch with exit status 2, named."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.finetune_runs import finetune, launch_command, refused_before_start, scalars, tiny_model_args
from helpers.paths import run_tool_in_process
from helpers.tiny import make_hf_model
from helpers.tiny_llama import make_hf_llama
from helpers.wandb_history import offline_run

from megatron.checkpoint.metadata import read_metadata
from megatron.data.tokenizer import HFTokenizer
from synthetic.corpus import generate_choice_examples

BASE = ["--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "2e-2", "--lr-warmup-iters", "1",
        "--lr-decay-style", "cosine", "--min-lr", "1e-3", "--attention-backend", "reference",
        "--lm-head-loss", "reference", "--no-bias-dropout-fusion", "--no-bias-gelu-fusion",
        "--hidden-dropout", "0", "--attention-dropout", "0", "--clip-grad", "0.015", "--eval-iters", "1",
        "--eval-interval", "100"]
LORA = ["--lora-rank", "3", "--lora-alpha", "6"]
TP2 = ["--tensor-model-parallel-size", "2"]


@pytest.fixture(scope="module")
def bases(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """family -> our TP1 PP1 checkpoint of a tiny random HF model over the demo vocabulary: a
    Llama (untied head, 4 heads over 2 KV heads, SwiGLU) and a BLOOM."""
    root = tmp_path_factory.mktemp("lora_bases")
    vocab = HFTokenizer(demo_dir / "tokenizer").vocab_size
    make_hf_llama(str(root / "llama_hf"), "llama", seed=3, vocab_size=vocab)
    make_hf_model(str(root / "bloom_hf"), num_heads=4, seed=3, vocab=vocab)
    for family in ("llama", "bloom"):
        run_tool_in_process("convert_checkpoint/hf_to_megatron.py", "--hf-dir", root / f"{family}_hf",
                            "--output-dir", root / family)
    return {family: root / family for family in ("llama", "bloom")}


RECOMPUTE = ["--checkpoint-activations"]  # recomputed blocks whose input (the frozen embedding's) needs no gradient
LAYOUTS = {
    "llama": {"single": (1, []), "tp2": (2, [*TP2, *RECOMPUTE]), "pp4": (4, ["--pipeline-model-parallel-size", "4"])},
    "bloom": {"single": (1, []), "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
              "tp2_dp2_zero2": (4, [*TP2, "--zero-stage", "2"])},
}


WANDB_RUN = ("bloom", "single")  # also logs to W&B, offline


@pytest.fixture(scope="module")
def runs(demo_dir, demo_data, bases, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """family -> layout -> a 6-iteration LoRA run's folder (`save/`, `tb/`), checkpoints at 3 and 6,
    zero-shot tasks scored at the start and the end."""
    root = tmp_path_factory.mktemp("lora_runs")
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(e) + "\n" for e in list(generate_choice_examples(1, seed=11))[::3]))
    folders: dict[str, dict[str, Path]] = {}
    for family, layouts in LAYOUTS.items():
        for name, (nprocs, extra) in layouts.items():
            out = root / family / name
            wandb = ["--wandb-project", "xp3-tests", "--wandb-exp-name", f"{family}-{name}", "--wandb-save-dir",
                     out] if (family, name) == WANDB_RUN else []
            result = finetune(nprocs, [*tiny_model_args(demo_dir, demo_data), *BASE, *LORA, "--train-iters", "6",
                                       "--load", bases[family], "--save", out / "save", "--save-interval", "3",
                                       "--tensorboard-dir", out / "tb", "--eval-tasks", tasks, *extra, *wandb],
                              WANDB_MODE="offline", WANDB_SILENT="true")
            (out / "stdout.txt").write_text(result.stdout)
            folders.setdefault(family, {})[name] = out
    return folders


def curve(run: Path) -> tuple[dict, dict, dict]:
    return (scalars(run / "tb", "lm loss"), scalars(run / "tb", "grad-norm"),
            scalars(run / "tb", "eval-tasks/average"))


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("family", LAYOUTS)
def test_layouts_give_the_single_process_curve(runs, family):
    """Loss and gradient norm (clipping active) at every layout equal one process's; the
    adapters learn (the validation loss falls); `--eval-tasks` scores the LoRA model at the start and end."""
    losses, norms, accuracy = curve(runs[family]["single"])
    assert len(losses) == 6 and min(norms.values()) > 0.015
    validation = scalars(runs[family]["single"] / "tb", "lm-loss-validation/valid")
    assert validation[6] < validation[0] - 0.005, validation
    assert sorted(accuracy) == [0, 6]
    for name, run in runs[family].items():
        layout_losses, layout_norms, layout_accuracy = curve(run)
        for step, loss in losses.items():
            assert layout_losses[step] == pytest.approx(loss, rel=2e-6, abs=0), (name, step)
            assert layout_norms[step] == pytest.approx(norms[step], rel=1e-4), (name, step)
        assert layout_accuracy == pytest.approx(accuracy, abs=1e-9), name


ADAPTED = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("family, layout", [("llama", "tp2"), ("llama", "pp4"), ("bloom", "pp2"),
                                            ("bloom", "tp2_dp2_zero2")])
def test_checkpoints_hold_the_adapters_alone(runs, bases, family, layout):
    """Every layer file holds LoRA tensors only (each block its 8, the other layers none),
    DeepSpeed's model states hold no base tensor, the optimizer's fp32 partitions are exactly the
    adapters' size, and the metadata names the base."""
    tag_dir = runs[family][layout] / "save" / "global_step6"
    lora_numel = 0
    for path in tag_dir.glob("layer_*-model_states.pt"):
        tensors = torch.load(path)
        layer = int(path.name[6:8])
        expected = {f"{m}.{part}.weight" for m in ADAPTED for part in ("lora_A", "lora_B")} if 3 <= layer <= 4 else set()
        assert set(tensors) == expected, path.name
        lora_numel += sum(t.numel() for t in tensors.values())
    for path in tag_dir.glob("mp_rank_*_model_states.pt"):
        module = torch.load(path, weights_only=False)["module"]
        assert module is None or all(".lora_" in name for name in module), path.name
    fp32 = 0
    for path in tag_dir.glob("*optim_states.pt"):
        state = torch.load(path, weights_only=False)["optimizer_state_dict"]
        fp32 += sum(t.numel() for t in state["single_partition_of_fp32_groups"]) - sum(state["group_paddings"])
    assert fp32 == lora_numel  # ZeRO's partitions of each TP rank together: its adapters, once
    assert not (runs[family][layout] / "save" / "zero_to_fp32.py").exists()  # DeepSpeed's, useless on ours
    meta = read_metadata(runs[family][layout] / "save")
    assert meta.lora.rank == 3 and meta.lora.alpha == 6 and set(meta.lora.targets) == {m.split(".")[1] for m in ADAPTED}
    assert meta.lora_base == {"folder": str(bases[family].resolve()), "tag": "global_step0"}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_interrupted_lora_run_resumes_bit_for_bit_past_a_damaged_checkpoint(demo_dir, demo_data, runs, tmp_path):
    """TP2 with recomputation, relaunched on the run's folder with one bit flipped in the
    checkpoint of iteration 6 (its size unchanged): the launch stops naming the file (its xxh3
    checksum), and with --checkpoint-fallback resumes from iteration 3 (the base from the base
    checkpoint, the adapters and their Adam state from ours), giving iterations 4..6 of the
    uninterrupted run bit for bit, and the same adapters; with `--save-retain 1` it deletes the
    checkpoint it resumed from once its own is complete."""
    whole = runs["llama"]["tp2"]
    shutil.copytree(whole / "save", tmp_path / "save")
    damaged = sorted((tmp_path / "save" / "global_step6").glob("*optim_states.pt"))[-1]  # TP rank 1's
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    args = [*tiny_model_args(demo_dir, demo_data), *BASE, *LORA, "--train-iters", "6", "--load", "unused-on-relaunch",
            "--save", tmp_path / "save", "--save-interval", "3", "--save-retain", "1", "--tensorboard-dir",
            tmp_path / "tb", *LAYOUTS["llama"]["tp2"][1]]
    refused = finetune(2, args, check=False)
    assert refused.returncode != 0 and "exitcode  : 2" in refused.stderr
    assert f"{damaged} is damaged: its xxh3 checksum is" in refused.stderr
    assert "--checkpoint-fallback" in refused.stderr and "training from" not in refused.stdout
    second = finetune(2, [*args, "--checkpoint-fallback"])
    assert f"{damaged} is damaged" in second.stdout and "falling back to global_step3" in second.stdout
    assert "training from iteration 3 to 6" in second.stdout
    # --save-retain 1: the checkpoint resumed from goes once the next one is complete and named
    assert f"deleted checkpoint {tmp_path / 'save' / 'global_step3'} (--save-retain 1)" in second.stdout
    assert sorted(p.name for p in (tmp_path / "save").iterdir() if p.is_dir()) == ["global_step6"]
    before, after = scalars(whole / "tb", "lm loss"), scalars(tmp_path / "tb", "lm loss")
    assert sorted(after) == [4, 5, 6] and all(after[i] == before[i] for i in (4, 5, 6))
    for path in (whole / "save" / "global_step6").glob("layer_*-model_states.pt"):
        mine, theirs = torch.load(path), torch.load(tmp_path / "save" / "global_step6" / path.name)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), path.name


def _small_filesystem_works() -> bool:
    """Whether this machine lets a test mount a tmpfs in a user + mount namespace (no root)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=1m tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_full_disk_is_named_once_nothing_is_left_and_the_same_command_resumes(demo_dir, demo_data, bases, runs,
                                                                                   tmp_path):
    """TP2 with --save on a filesystem the test makes (a tmpfs in a user + mount namespace) that
    holds the checkpoint of iteration 3 but not that of 6 as well: the run stops (non-zero), one
    rank says "no space left on SAVE while saving global_step6 (free X GiB; the last checkpoint
    took Y GiB)", no `global_step6` stays behind, `latest` still names global_step3; after the
    filesystem is grown, the same command resumes onto the uninterrupted run's curve."""
    if not _small_filesystem_works():
        pytest.skip("this machine lets no user namespace mount a tmpfs: no small filesystem to fill")
    whole = runs["llama"]["tp2"]
    one = sum(p.stat().st_size for p in (whole / "save" / "global_step3").iterdir())
    size = int(one * 1.6) // 4096 * 4096 + 8 * 4096  # room for one checkpoint (and the pointers), not two
    save = tmp_path / "save"
    save.mkdir()
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(e) + "\n" for e in list(generate_choice_examples(1, seed=11))[::3]))
    args = [*tiny_model_args(demo_dir, demo_data), *BASE, *LORA, "--train-iters", "6", "--load", bases["llama"],
            "--save", save, "--save-interval", "3", "--eval-tasks", tasks, *LAYOUTS["llama"]["tp2"][1]]
    first, env = launch_command(2, [*args, "--tensorboard-dir", tmp_path / "tb_first"])
    second, _ = launch_command(2, [*args, "--tensorboard-dir", tmp_path / "tb_second"])
    out = tmp_path / "out"
    out.mkdir()
    script = f"""
mount -t tmpfs -o size={size} tmpfs {save}
{shlex.join(first)} > {out}/first.txt 2>&1; echo $? > {out}/first.status
ls {save} > {out}/first.ls; cat {save}/latest > {out}/first.latest
mount -o remount,size=64m {save}
{shlex.join(second)} > {out}/second.txt 2>&1; echo $? > {out}/second.status
"""
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], env=env, check=True,
                   timeout=900)
    first_output = (out / "first.txt").read_text()
    assert (out / "first.status").read_text().strip() != "0", first_output[-3000:]
    message = f"error: no space left on {save} while saving global_step6 (free "
    assert first_output.count(message) == 1, first_output[-3000:]
    assert re.search(r"the last checkpoint took \d+\.\d\d GiB\)", first_output)
    assert "global_step6" not in (out / "first.ls").read_text().split()
    assert (out / "first.latest").read_text() == "global_step3"
    second_output = (out / "second.txt").read_text()
    assert (out / "second.status").read_text().strip() == "0", second_output[-3000:]
    assert "training from iteration 3 to 6" in second_output
    before, after = scalars(whole / "tb", "lm loss"), scalars(tmp_path / "tb_second", "lm loss")
    assert sorted(after) == [4, 5, 6] and all(after[i] == before[i] for i in (4, 5, 6))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_wandb_offline_has_tensorboards_scalars_and_the_log_lines(runs):
    """`--wandb-project` with WANDB_MODE=offline: the run's W&B history, read back from its file,
    holds every TensorBoard scalar at every step (TensorBoard keeps float32), the log lines'
    losses and learning rates as printed, and the run's config."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs[WANDB_RUN[0]][WANDB_RUN[1]]
    history, config = offline_run(run)
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"lm loss", "grad-norm", "learning-rate", "lm-loss-validation/valid", "eval-tasks/average"} <= set(tags)
    for tag in tags:
        for event in events.Scalars(tag):
            assert history[event.step][tag] == pytest.approx(event.value, rel=1e-6), (tag, event.step)
    logged = re.findall(r"iteration +(\d+)/ +\d+ .*?learning rate ([\d.E+-]+) .*?lm loss ([\d.E+-]+)",
                        (run / "stdout.txt").read_text())
    assert len(logged) == 6
    for step, lr, loss in logged:
        assert f"{history[int(step)]['lm loss']:E}" == loss and f"{history[int(step)]['learning-rate']:.3E}" == lr
    assert config["seed"] == 1234 and config["lora"]["rank"] == 3 and config["parallel"]["tensor"] == 1


@pytest.mark.slow  # it reads the shared set-up's finished runs (7 finetunes)
def test_lora_refusals(demo_dir, demo_data, bases, runs, tmp_path, capsys):
    """Unknown targets (the valid ones named), ZeRO-3, no base, a universal checkpoint, adapters
    of another base in --lora-load, flags that contradict the adapters continued, a LoRA
    checkpoint loaded as if it were a model, and one made universal (adapters change layout
    through --lora-load)."""
    common = [*tiny_model_args(demo_dir, demo_data), *BASE, "--train-iters", "2"]
    llama, bloom_run = bases["llama"], runs["bloom"]["single"] / "save"
    cases = [
        ([*LORA, "--load", llama, "--lora-target", "q_proj", "dense"],
         "--lora-target q_proj: not a linear layer of the llama family's blocks; choose from query_key_value dense"),
        ([*LORA, "--load", llama, "--zero-stage", "3"], "--zero-stage 3 is not supported with LoRA"),
        ([*LORA, "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4"],
         "LoRA adapts a model: give its checkpoint in --load"),
        ([*LORA, "--load", llama, "--lora-load", bloom_run], "its adapters are for another base (bloom"),
        (["--lora-rank", "4", "--load", bloom_run], "--lora-rank 4 disagrees with the adapters in"),
        (["--load", bloom_run], "holds LoRA adapters, not a model: continue them with --lora-rank 3"),
        (["--lora-alpha", "2", "--load", llama], "--lora-alpha, --lora-dropout, --lora-target and --lora-rslora "
                                                 "need --lora-rank"),
        (["--lora-rank", "0", "--load", llama], "--lora-rank 0: give a rank of 1 or more"),
    ]
    for extra, message in cases:
        assert message in refused_before_start([*common, *extra, "--save", tmp_path / "unused"], capsys), extra
    universal = run_tool_in_process("convert_checkpoint/to_universal.py", "--checkpoint-dir", bloom_run, check=False)
    assert universal.returncode == 1 and "holds LoRA adapters" in universal.stderr
