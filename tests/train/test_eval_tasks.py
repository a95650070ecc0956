"""A tiny model learns, and zero-shot evaluation during training (`--eval-tasks`) shows it: finetuned
on a learnable synthetic task (one-word translation into French) by two pipeline stages, it goes
from chance to far above it on held-out multiple-choice prompts of that task, as the log line and
TensorBoard report (before the first step, every `--eval-tasks-interval`, after the last); a bad
tasks file stops the launch naming its line."""

from __future__ import annotations

import json
import random

import pytest
from helpers.finetune_runs import finetune, refused_before_start, scalars
from helpers.paths import run_tool_in_process
from transformers import BloomForCausalLM

from synthetic.corpus import CHOICE_PROMPTS, LEXICON, PROMPTS

ENGLISH, FRENCH = LEXICON["en"].split(), LEXICON["fr"].split()


def _translation(rng: random.Random) -> tuple[str, int]:
    concept = rng.randrange(len(ENGLISH))
    return PROMPTS["translate"]["fr"].format(src="English", dst="French", x=ENGLISH[concept]), concept


def write_task(folder, rng: random.Random, train_rows: int, valid_rows: int, examples: int):
    """Training and validation pairs (under either prompt), and multiple-choice examples (the
    French word among two others, under both prompts) from other draws of the same task."""
    for split, rows in (("train", train_rows), ("valid", valid_rows)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(rows):
                inputs, concept = _translation(rng)
                template = rng.choice(list(CHOICE_PROMPTS.values()))
                f.write(json.dumps({"inputs": template.format(inputs), "targets": FRENCH[concept]},
                                   ensure_ascii=False) + "\n")
    with open(folder / "tasks.jsonl", "w", encoding="utf-8") as f:
        for i in range(examples):
            inputs, concept = _translation(rng)
            choices = [FRENCH[concept], *rng.sample([w for w in FRENCH if w != FRENCH[concept]], 2)]
            rng.shuffle(choices)
            for prompt, template in CHOICE_PROMPTS.items():
                f.write(json.dumps({"id": f"{i}/{prompt}", "dataset": "translate", "language": "fr",
                                    "prompt": prompt, "inputs": template.format(inputs), "choices": choices,
                                    "label": choices.index(FRENCH[concept])}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def task(demo_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("translation_task")
    write_task(folder, random.Random(0), train_rows=2000, valid_rows=200, examples=60)
    for split in ("train", "valid"):
        run_tool_in_process("preprocess_data.py", "--input", folder / f"{split}.jsonl", "--json-keys", "inputs",
                            "targets", "--prepend-space", "targets", "--append-eod", "targets",
                            "--tokenizer-name-or-path", demo_dir / "tokenizer", "--output-prefix", folder / split,
                            "--log-interval", "0")
    return folder


def _flags(demo_dir, task, tasks_file) -> list:
    return ["--tokenizer-name-or-path", demo_dir / "tokenizer", "--seq-length", "64", "--num-workers", "0",
            "--train-weighted-split-paths", f"train: 1 0:1 {task / 'train'}", "--num-layers", "2",
            "--hidden-size", "64", "--num-attention-heads", "4", "--micro-batch-size", "4", "--global-batch-size", "16",
            "--train-iters", "120", "--lr", "3e-3", "--lr-warmup-iters", "5", "--hidden-dropout", "0",
            "--attention-dropout", "0", "--log-interval", "10", "--eval-tasks", tasks_file]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_tiny_model_learns_and_climbs_from_chance_on_two_pipeline_stages(demo_dir, task, tmp_path):
    """From random init on two pipeline stages: the held-out validation loss falls far below its
    start, the zero-shot accuracy climbs from chance to near 1, the log line has Megatron's
    fields, and the checkpoint converts to a HF model."""
    result = finetune(2, [*_flags(demo_dir, task, task / "tasks.jsonl"), "--pipeline-model-parallel-size", "2",
                          "--eval-tasks-interval", "50", "--valid-weighted-split-paths",
                          f"valid: 1 0:1 {task / 'valid'}", "--eval-interval", "120", "--eval-iters", "2",
                          "--save", tmp_path / "run", "--tensorboard-dir", tmp_path / "tb"])
    valid = scalars(tmp_path / "tb", "lm-loss-validation/valid")
    assert valid[120] < 0.5 * valid[0], valid
    line = next(line for line in result.stdout.splitlines() if " iteration      120/" in line)
    for field in ("consumed samples", "consumed tokens", "lm loss", "learning rate", "grad norm",
                  "skipped iterations", "tokens/s", "target tokens/s", "TFLOPs/device", "MFU", "memory"):
        assert field in line
    assert "loss scale" not in line  # fp16 only
    accuracy = scalars(tmp_path / "tb", "eval-tasks/translate/fr")
    assert sorted(accuracy) == [0, 50, 100, 120]  # before the first step, every 50, after the last
    assert accuracy[0] < 0.55  # chance is 1/3
    assert accuracy[120] > 0.9, accuracy
    assert scalars(tmp_path / "tb", "eval-tasks/average")[120] == accuracy[120]
    line = next(line for line in result.stdout.splitlines() if "zero-shot accuracy at iteration 120" in line)
    assert "(120 examples, median over prompts)" in line and f"translate/fr {accuracy[120]:.4f}" in line
    run_tool_in_process("convert_checkpoint/megatron_to_hf.py", "--checkpoint-dir", tmp_path / "run",
                        "--output-dir", tmp_path / "hf", "--tokenizer-dir", demo_dir / "tokenizer")
    assert BloomForCausalLM.from_pretrained(tmp_path / "hf").config.n_layer == 2
    # the whole-model engine (ZeRO-2) scores the same random init (`--seed`) alike
    finetune(1, [*_flags(demo_dir, task, task / "tasks.jsonl"), "--zero-stage", "2", "--train-iters", "1", "--lr-warmup-iters", "0",
                 "--global-batch-size", "4", "--tensorboard-dir", tmp_path / "tb_zero2"])
    assert scalars(tmp_path / "tb_zero2", "eval-tasks/translate/fr")[0] == accuracy[0]


def test_a_bad_tasks_file_stops_the_launch_naming_its_line(demo_dir, task, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "a", "dataset": "d", "language": "fr", "prompt": "p", "inputs": "x",
                                 "choices": ["only"], "label": 0}) + "\n")
    refused = refused_before_start(_flags(demo_dir, task, tasks), capsys)
    assert f"error: --eval-tasks {tasks}:1: choices must be a list of at least two strings" in refused
    flags = [f for f in _flags(demo_dir, task, tasks) if f not in ("--eval-tasks", tasks)]
    refused = refused_before_start([*flags, "--eval-tasks-interval", "5"], capsys)
    assert "--eval-tasks-interval and --eval-tasks-length-normalize need --eval-tasks" in refused
