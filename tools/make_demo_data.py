#!/usr/bin/env python3
"""Generate the demo's xP3-style multilingual jsonl (train and validation splits), its held-out
multiple-choice examples for zero-shot evaluation (`eval_tasks/demo_choices.jsonl`), the languages
each of their tasks is finetuned in (`finetuned_languages.json`, for `tools/evaluate.py
--finetuned-languages`: the crosslingual task's held-out languages are missing from its list), and
train its byte-level BPE tokenizer, into one folder. Deterministic in --seed; nothing is
downloaded."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from megatron.utils.atomic_files import write_atomically
from synthetic.corpus import CROSSLINGUAL, LANGUAGES, TASKS, generate_choice_examples, generate_rows, write_jsonl
from synthetic.tokenizer_training import train_bpe_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--valid-rows", type=int, default=1000)
    parser.add_argument("--choice-examples", type=int, default=40,
                        help="multiple-choice examples per task and language")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    train = write_jsonl(out / "xp3_demo_train.jsonl", args.train_rows, seed=args.seed)
    valid = write_jsonl(out / "xp3_demo_valid.jsonl", args.valid_rows, seed=args.seed + 1)
    choices = out / "eval_tasks" / "demo_choices.jsonl"
    choices.parent.mkdir(parents=True, exist_ok=True)
    trained = frozenset(row["inputs"] for row in generate_rows(args.train_rows, args.seed))
    write_atomically(choices, "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in
                                      generate_choice_examples(args.choice_examples, args.seed + 2, trained)))
    finetuned = {f"demo_{task}": [lang for lang in LANGUAGES if lang not in CROSSLINGUAL.get(task, ())]
                 for task in TASKS}
    write_atomically(out / "finetuned_languages.json", json.dumps(finetuned, indent=1) + "\n")
    texts = itertools.chain.from_iterable(
        (row["inputs"], " " + row["targets"]) for row in generate_rows(args.train_rows, args.seed)
    )
    tokenizer = train_bpe_tokenizer(texts, out / "tokenizer", vocab_size=args.vocab_size)
    print(f"wrote {train}, {valid}, {choices}, {out / 'finetuned_languages.json'} and the tokenizer folder {tokenizer}")


if __name__ == "__main__":
    main()
