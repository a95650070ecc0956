"""The demo corpus generator and tokenizer: deterministic, multilingual, correct answers, and a
tokenizer folder that transformers loads with BLOOM's special-token layout."""

from __future__ import annotations

import json
import random

from transformers import AutoTokenizer

from synthetic.corpus import LANGUAGES, TASKS, generate_rows, make_row
from megatron.data.tokenizer import HFTokenizer


def test_deterministic_and_covers_every_task_and_language():
    rows = list(generate_rows(2000, seed=3))
    assert rows == list(generate_rows(2000, seed=3))
    assert rows != list(generate_rows(2000, seed=4))
    assert {r["task"] for r in rows} == set(TASKS)
    assert {r["language"] for r in rows} == set(LANGUAGES)
    assert all(r["inputs"].strip() and r["targets"].strip() for r in rows)


def test_answers_are_right():
    rng = random.Random(0)
    rows = [make_row(rng) for _ in range(3000)]
    for row in rows:
        if row["task"] == "arithmetic" and row["language"] == "en":
            a, b = (int(w) for w in row["inputs"].rstrip("?").split() if w.isdigit())
            assert row["targets"] == str(a + b)
        if row["task"] == "reverse" and row["language"] == "en":
            words = row["inputs"].split(": ", 1)[1].split()
            assert row["targets"].split() == words[::-1]


def test_tokenizer_folder_loads_in_transformers(demo_dir):
    ours = HFTokenizer(demo_dir / "tokenizer")
    theirs = AutoTokenizer.from_pretrained(demo_dir / "tokenizer")
    assert ours.eod == theirs.eos_token_id == 2 and ours.pad == theirs.pad_token_id == 3
    assert ours.bos == theirs.bos_token_id == 1
    row = json.loads((demo_dir / "valid.jsonl").read_text().splitlines()[0])
    assert ours.encode(row["inputs"]) == theirs(row["inputs"], add_special_tokens=False)["input_ids"]
    assert ours.decode(ours.encode(row["inputs"])) == row["inputs"]
