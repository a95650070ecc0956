"""Prompted multiple-choice examples, one JSON object per line:
`{"id", "dataset", "language", "prompt", "inputs", "choices": [str, ...], "label": int}`, read
from a file or from every `*.jsonl` of a folder and checked field by field; a bad line stops the
read with `file:line` and what is wrong (`tools/make_eval_prompts.py` writes such files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TEXT_FIELDS = ("id", "dataset", "language", "prompt", "inputs")


class ExampleError(ValueError):
    """A multiple-choice file that cannot be evaluated: the message names the file and line."""


@dataclass(frozen=True)
class ChoiceExample:
    id: str
    dataset: str
    language: str
    prompt: str  # the template's name
    inputs: str
    choices: tuple[str, ...]
    label: int
    where: str = field(default="", compare=False)  # file:line, for messages


def check_example(row, where: str) -> ChoiceExample:
    """`row` (a parsed JSON line) as an example, or ExampleError naming `where` and the problem."""
    if not isinstance(row, dict):
        raise ExampleError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in (*TEXT_FIELDS, "choices", "label") if name not in row]
    if missing:
        raise ExampleError(f"{where}: missing field(s) {', '.join(missing)}")
    for name in TEXT_FIELDS:
        if not isinstance(row[name], str) or not row[name]:
            raise ExampleError(f"{where}: {name} must be a non-empty string, got {row[name]!r}")
    choices, label = row["choices"], row["label"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise ExampleError(f"{where}: choices must be a list of at least two strings, got {choices!r}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise ExampleError(f"{where}: choice {i} is empty or not a string ({choice!r}); "
                               "every choice needs text to score")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ExampleError(f"{where}: label {label!r} is not an index into its {len(choices)} choices")
    return ChoiceExample(row["id"], row["dataset"], row["language"], row["prompt"], row["inputs"],
                         tuple(choices), label, where)


class NotJson(ValueError):
    """A line that does not parse, as `json_lines` yields it in the line's place."""


def json_lines(path: Path) -> Iterator[tuple[str, object]]:
    """`(file:line, parsed value)` for every non-blank line of `path`; a line that is not JSON
    yields a NotJson naming it, so a reader may stop there or count it and go on."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                where = f"{path}:{number}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as error:
                    yield where, NotJson(f"{where}: not valid JSON ({error})")


def task_files(path: str | Path) -> list[Path]:
    """The file itself, or a folder's `*.jsonl` files in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ExampleError(f"{path}: a folder without *.jsonl files")
        return files
    if not path.is_file():
        raise ExampleError(f"{path}: no such file or folder")
    return [path]


def read_examples(path: str | Path) -> list[ChoiceExample]:
    """Every example of `path` (a file or a folder of them); ids must be unique across them."""
    examples, seen = [], {}
    for file in task_files(path):
        for where, row in json_lines(file):
            if isinstance(row, NotJson):
                raise ExampleError(str(row))
            example = check_example(row, where)
            if example.id in seen:
                raise ExampleError(f"{where}: id {example.id!r} already used at {seen[example.id]}")
            seen[example.id] = where
            examples.append(example)
    if not examples:
        raise ExampleError(f"{path}: no examples")
    return examples
