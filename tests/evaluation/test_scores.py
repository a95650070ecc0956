"""Zero-shot scores of our model are transformers' scores: `tools/evaluate.py` on our checkpoint
at DP=2 x TP=2 and at TP=2 x PP=2 (gloo, torchrun: choices packed into rows, split over
data-parallel ranks, through every pipeline stage) and on the HF folder (`--hf-dir`) gives per
example the scores this test computes itself with `BloomForCausalLM`, one (inputs, choice) pair at
a time, within 1e-5 in fp32: summed and length-normalised, choices of different token lengths,
inputs cut on the left to fit a row; with `--prepend-bos` (`--hf-dir`), the BOS first in every
pair's inputs, also where they are cut, and the rule in the report. The same at TP=2 x PP=2 for a
Llama-family checkpoint against `LlamaForCausalLM`."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from helpers.finetune_runs import finetune
from helpers.paths import REPO, run_tool_in_process
from helpers.tiny import make_hf_model

from megatron.data.tokenizer import HFTokenizer
from synthetic.corpus import generate_choice_examples

SEQ_LENGTH = 64
EVALUATE = REPO / "tools" / "evaluate.py"


@pytest.fixture(scope="module")
def setup(demo_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_scores")
    tokenizer = HFTokenizer(demo_dir / "tokenizer")
    model = make_hf_model(str(folder / "hf"), num_heads=4, seed=5, vocab=tokenizer.vocab_size)
    run_tool_in_process("convert_checkpoint/hf_to_megatron.py", "--hf-dir", folder / "hf", "--output-dir",
                        folder / "tp2", "--target-tp", "2")
    examples = list(generate_choice_examples(1, seed=11))[::3]  # every task: 2 or 3 choices
    rng = random.Random(0)
    long_inputs = " ".join(rng.choice(["cat", "dog", "river", "moon"]) for _ in range(80))
    examples.append({"id": "long", "dataset": "long", "language": "en", "prompt": "p", "inputs": long_inputs,
                     "choices": ["cat", "dog river moon"], "label": 1})
    tasks = folder / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return folder, model, tokenizer, examples, tasks


def reference_scores(model, tokenizer: HFTokenizer, example: dict, length_normalize: bool,
                     bos: tuple[int, ...] = ()) -> list[float]:
    """Each choice's log-probability after `bos` and the inputs (the last tokens that fit a row
    beside them)."""
    scores = []
    for choice in example["choices"]:
        choice_ids = tokenizer.encode(" " + choice)
        input_ids = [*bos, *tokenizer.encode(example["inputs"])[-(SEQ_LENGTH + 1 - len(choice_ids) - len(bos)):]]
        with torch.no_grad():
            logits = model(torch.tensor([input_ids + choice_ids])).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        total = sum(float(log_probs[len(input_ids) - 1 + k, token]) for k, token in enumerate(choice_ids))
        scores.append(total / len(choice_ids) if length_normalize else total)
    return scores


def common_args(demo_dir, tasks) -> list:
    return ["--tasks", tasks, "--tokenizer-name-or-path", demo_dir / "tokenizer", "--seq-length", SEQ_LENGTH,
            "--micro-batch-size", "2"]


def _check(output, examples, expected_scores):
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in rows] == [e["id"] for e in examples]
    for row, example, expected in zip(rows, examples, expected_scores):
        assert row["label"] == example["label"] and row["dataset"] == example["dataset"]
        assert row["scores"] == pytest.approx(expected, abs=1e-5, rel=0), row["id"]
        assert row["prediction"] == max(range(len(expected)), key=lambda i: (expected[i], -i))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_scores_at_dp2_tp2_and_tp2_pp2_equal_transformers(setup, demo_dir, tmp_path):
    folder, model, tokenizer, examples, tasks = setup
    expected = {normalize: [reference_scores(model, tokenizer, e, normalize) for e in examples]
                for normalize in (False, True)}
    lengths = [len({len(tokenizer.encode(" " + c)) for c in e["choices"]}) for e in examples]
    assert max(lengths) > 1  # some examples' choices differ in token count
    common = common_args(demo_dir, tasks)
    runs = {
        "dp2_tp2": ([], ["--tensor-model-parallel-size", "2"]),
        "tp2_pp2_normalized": (["--length-normalize"],
                               ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
    }
    for name, (scoring, layout) in runs.items():
        result = finetune(4, [*common, *scoring, *layout, "--checkpoint-dir", folder / "tp2",
                              "--per-example-output", tmp_path / f"{name}.jsonl",
                              "--output-json", tmp_path / f"{name}.json", "--plot", tmp_path / f"{name}.png"],
                          script=EVALUATE)
        _check(tmp_path / f"{name}.jsonl", examples, expected[bool(scoring)])
        # packed: several choices per row; the long example's inputs were cut to fit
        choices, rows = map(int, re.search(r"(\d+) choices in (\d+) rows", result.stdout).groups())
        assert rows < 0.75 * choices
        assert "pairs longer than --seq-length 64 kept their last input tokens" in result.stdout
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "dp2_tp2.json").read_text())
    assert report["examples"] == len(examples) and report["scoring"] == "summed log-probability"
    assert report["tokenization"] == "no BOS"

    run_tool_in_process("evaluate.py", *common, "--length-normalize", "--hf-dir", folder / "hf",
                        "--per-example-output", tmp_path / "hf.jsonl")
    _check(tmp_path / "hf.jsonl", examples, expected[True])


def test_hf_dir_with_prepend_bos_scores_after_the_bos_and_says_so(setup, demo_dir, tmp_path):
    """Also: --finetuned-languages groups the table's and the report's languages by it."""
    folder, model, tokenizer, examples, tasks = setup
    finetuned = {example["dataset"]: ["en"] for example in examples}
    (tmp_path / "finetuned.json").write_text(json.dumps(finetuned))
    result = run_tool_in_process("evaluate.py", *common_args(demo_dir, tasks), "--prepend-bos", "--hf-dir",
                                 folder / "hf", "--per-example-output", tmp_path / "hf.jsonl",
                                 "--output-json", tmp_path / "hf.json",
                                 "--finetuned-languages", tmp_path / "finetuned.json")
    _check(tmp_path / "hf.jsonl", examples,
           [reference_scores(model, tokenizer, e, False, bos=(tokenizer.bos,)) for e in examples])
    rule = f"BOS before inputs (id {tokenizer.bos})"
    assert f"tokenization: {rule}" in result.stdout
    assert "pairs longer than --seq-length 64 kept their last input tokens" in result.stdout
    report = json.loads((tmp_path / "hf.json").read_text())
    assert report["tokenization"] == rule
    groups = {(e["dataset"], e["language"]): "finetuned" if e["language"] == "en" else "held-out" for e in examples}
    assert {(d, lang): g for d, languages in report["language_groups"].items() for lang, g in languages.items()} == groups
    assert set(report["mean_by_finetuning_languages"]) == set(finetuned)
    table = [line.split() for line in result.stdout.splitlines() if line.startswith(("dataset", "demo_"))]
    assert table[0][3] == "finetune" and {row[3] for row in table[1:] if row[1] != "mean"} == {"finetuned", "held-out"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_llama_family_scores_at_tp2_pp2_equal_transformers(setup, demo_dir, tmp_path):
    """The same examples under a tiny untied `LlamaForCausalLM` (GQA, llama3 rope scaling) converted
    to our checkpoint: `tools/evaluate.py` at TP=2 x PP=2 gives transformers' scores."""
    from helpers.tiny_llama import make_hf_llama

    _, _, tokenizer, examples, tasks = setup
    model = make_hf_llama(str(tmp_path / "hf"), "llama", seed=6, vocab_size=tokenizer.vocab_size)
    run_tool_in_process("convert_checkpoint/hf_to_megatron.py", "--hf-dir", tmp_path / "hf", "--output-dir",
                        tmp_path / "ours", "--target-tp", "2")
    finetune(4, [*common_args(demo_dir, tasks), "--checkpoint-dir", tmp_path / "ours", "--tensor-model-parallel-size",
                 "2", "--pipeline-model-parallel-size", "2", "--per-example-output", tmp_path / "ours.jsonl"],
             script=EVALUATE)
    _check(tmp_path / "ours.jsonl", examples, [reference_scores(model, tokenizer, e, False) for e in examples])
