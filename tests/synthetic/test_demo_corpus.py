"""The demo corpus generator and tokenizer: deterministic, multilingual, correct answers, and a
tokenizer folder that transformers loads with BLOOM's special-token layout."""

from __future__ import annotations

import json
import random

from transformers import AutoTokenizer

from synthetic.corpus import CROSSLINGUAL, LANGUAGES, TASKS, generate_choice_examples, generate_rows, make_row
from megatron.data.tokenizer import HFTokenizer


def test_deterministic_and_covers_every_task_and_language_but_the_held_out_ones():
    """Every task and language occurs, except a `CROSSLINGUAL` task in its held-out languages,
    which only its multiple-choice examples use."""
    rows = list(generate_rows(2000, seed=3))
    assert rows == list(generate_rows(2000, seed=3))
    assert rows != list(generate_rows(2000, seed=4))
    assert {r["task"] for r in rows} == set(TASKS)
    assert {r["language"] for r in rows} == set(LANGUAGES)
    assert all(r["inputs"].strip() and r["targets"].strip() for r in rows)
    assert CROSSLINGUAL
    for task, held_out in CROSSLINGUAL.items():
        assert held_out and {r["language"] for r in rows if r["task"] == task} == set(LANGUAGES) - set(held_out)
        examples = [e for e in generate_choice_examples(2, seed=3) if e["dataset"] == f"demo_{task}"]
        assert {e["language"] for e in examples} == set(LANGUAGES)


def test_answers_are_right():
    rng = random.Random(0)
    rows = [make_row(rng) for _ in range(3000)]
    for row in rows:
        if row["task"] == "compare" and row["language"] == "en":
            a, b = (int(w.strip(",?")) for w in row["inputs"].split() if w.strip(",?").isdigit())
            assert row["targets"] == str(max(a, b)) and a != b
        if row["task"] == "copy" and row["language"] == "en":
            assert row["inputs"] == f"Words: {row['targets']}\nRepeat these words exactly:"
    examples = list(generate_choice_examples(3, seed=1))
    assert {e["dataset"] for e in examples} == {f"demo_{task}" for task in TASKS}
    for example in examples:
        answer = example["choices"][example["label"]]
        assert len(set(example["choices"])) == len(example["choices"]) >= 2
        if example["dataset"] == "demo_compare":
            assert all(choice in example["inputs"] for choice in example["choices"])
            assert int(answer) == max(int(c) for c in example["choices"])


def test_tokenizer_folder_loads_in_transformers(demo_dir):
    ours = HFTokenizer(demo_dir / "tokenizer")
    theirs = AutoTokenizer.from_pretrained(demo_dir / "tokenizer")
    assert ours.eod == theirs.eos_token_id == 2 and ours.pad == theirs.pad_token_id == 3
    assert ours.bos == theirs.bos_token_id == 1
    row = json.loads((demo_dir / "valid.jsonl").read_text().splitlines()[0])
    assert ours.encode(row["inputs"]) == theirs(row["inputs"], add_special_tokens=False)["input_ids"]
    assert ours.decode(ours.encode(row["inputs"])) == row["inputs"]
