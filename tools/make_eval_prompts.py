#!/usr/bin/env python3
"""Prompted multiple-choice examples for `tools/evaluate.py` from the raw rows of XCOPA, XNLI,
XStoryCloze or XWinograd as `datasets` exports them to json lines (`ds.to_json(path)`; the fields
as on the HF hub), one example per row and English template (`megatron/evaluation/prompts.py`).
Nothing is downloaded: bring the files.

    python tools/make_eval_prompts.py --dataset xcopa --language et \\
        --input xcopa_et_test.jsonl --output eval_tasks/xcopa_et.jsonl

A malformed row stops it naming `file:line` (no output is written), or with --skip-bad-rows is
skipped and counted by reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from megatron.evaluation.examples import ExampleError, NotJson, check_example, json_lines
from megatron.evaluation.prompts import DATASETS, RowError, render
from megatron.utils.atomic_files import write_atomically


def examples_of(dataset: str, language: str, path: Path, skip_bad_rows: bool, skipped: Counter) -> list[dict]:
    examples = []
    for where, row in json_lines(path):
        try:
            if isinstance(row, NotJson):
                raise RowError(str(row), "not JSON")
            rendered = list(render(dataset, row, where))
            examples_of_row = [{"id": f"{dataset}/{language}/{where.rsplit('/', 1)[-1]}/{prompt}", "dataset": dataset,
                                "language": language, "prompt": prompt, "inputs": inputs, "choices": choices,
                                "label": label} for prompt, inputs, choices, label in rendered]
            for example in examples_of_row:
                try:
                    check_example(example, where)  # what evaluate.py will read back
                except ExampleError as error:
                    raise RowError(str(error), "unusable example") from None
        except RowError as error:
            if not skip_bad_rows:
                raise
            skipped[error.reason] += 1
            continue
        examples += examples_of_row
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--language", required=True, help="the language code reported (e.g. et, zh, jp)")
    parser.add_argument("--input", required=True, nargs="+", type=Path, help="json lines of raw rows")
    parser.add_argument("--output", required=True, type=Path, help="the examples' jsonl (written whole)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip unusable rows and count them by reason instead of stopping")
    args = parser.parse_args(argv)
    skipped: Counter = Counter()
    try:
        examples = [e for path in args.input
                    for e in examples_of(args.dataset, args.language, path, args.skip_bad_rows, skipped)]
    except (RowError, ValueError, OSError) as error:
        print(f"error: {error}\nno output written", file=sys.stderr)
        return 1
    names = [path.name for path in args.input]
    if len(set(names)) < len(names):
        print(f"error: input files share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
              "example ids are made of file names and lines: rename one\nno output written", file=sys.stderr)
        return 1
    if not examples:
        print(f"error: no usable rows in {', '.join(map(str, args.input))}\nno output written", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.output, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    counts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    print(f"wrote {len(examples)} examples ({args.dataset}, {args.language}) to {args.output}"
          + (f"; skipped rows: {counts}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
