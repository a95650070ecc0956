"""The multiple-choice files: `tools/make_eval_prompts.py` on rows in each dataset's field layout
(written here, as `datasets` exports them), and the refusals of bad examples and bad rows, each
naming its file and line, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.paths import run_tool_in_process

from megatron.evaluation.examples import ExampleError, read_examples
from megatron.evaluation.prompts import TEMPLATES

RAW_ROWS = {
    "xcopa": [{"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
               "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0},
              {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
               "choice2": "She lost her appetite.", "question": "cause", "label": 0, "idx": 1}],
    "xnli": [{"premise": "Il fait beau.", "hypothesis": "Le temps est agréable.", "label": 0},
             {"premise": "Il pleut.", "hypothesis": "Il fait sec.", "label": 2}],
    "xstory_cloze": [{"story_id": "x", "input_sentence_1": "Tom went out.", "input_sentence_2": "It rained.",
                      "input_sentence_3": "He had no umbrella.", "input_sentence_4": "He got wet.",
                      "sentence_quiz1": "Tom was dry.", "sentence_quiz2": "Tom changed his clothes.",
                      "answer_right_ending": 2}],
    "xwinograd": [{"sentence": "The trophy doesn't fit in the suitcase because _ is too big.",
                   "option1": "the trophy", "option2": "the suitcase", "answer": "1"}],
}
LABELS = {"xcopa": [1, 0], "xnli": [0, 2], "xstory_cloze": [1], "xwinograd": [0]}


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n"
                            for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("dataset", list(RAW_ROWS))
def test_make_eval_prompts_renders_every_template_of_each_dataset(dataset, tmp_path):
    raw = _jsonl(tmp_path / f"{dataset}.jsonl", RAW_ROWS[dataset])
    out = tmp_path / "tasks" / f"{dataset}_xx.jsonl"
    result = run_tool_in_process("make_eval_prompts.py", "--dataset", dataset, "--language", "xx", "--input", raw,
                                 "--output", out)
    templates = TEMPLATES[dataset]
    assert f"wrote {len(RAW_ROWS[dataset]) * len(templates)} examples" in result.stdout
    examples = read_examples(out.parent)  # what evaluate.py reads back
    assert [e.prompt for e in examples] == [t.name for _ in RAW_ROWS[dataset] for t in templates]
    assert len(set(e.prompt for e in examples)) == len(templates) >= 3
    assert {(e.dataset, e.language) for e in examples} == {(dataset, "xx")}
    for number, (row, label) in enumerate(zip(RAW_ROWS[dataset], LABELS[dataset]), start=1):
        rendered = [e for e in examples if f":{number}/" in e.id]
        assert {e.label for e in rendered} == {label}
        for example in rendered:
            texts = [v for v in row.values() if isinstance(v, str) and " " in v]
            # the inputs carry the row's own text; the right choice is its answer
            assert any(text in example.inputs or text[:1].lower() + text[1:] in example.choices for text in texts)
    if dataset == "xcopa":  # the answer choices themselves, cased to follow a connective
        connective = next(e for e in examples if e.prompt == "connective" and e.id.endswith(":1/connective"))
        assert connective.inputs == "The man turned on the faucet so..."
        assert connective.choices[connective.label] == "water flowed from the spout."


@pytest.mark.parametrize("row, problem", [
    ({"premise": "p", "choice1": "a", "question": "cause", "label": 0}, "missing field(s) choice2"),
    ({"premise": "p", "choice1": "a", "choice2": " ", "question": "cause", "label": 0}, "empty field(s) choice2"),
    ({"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}, "label 2 is not one of its 2"),
    ({"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}, "question 'why'"),
    ({"premise": 5, "choice1": "a", "choice2": "b", "question": "cause", "label": 0}, "field(s) premise must be text"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_raw_row_stops_with_its_line_or_is_counted_with_skip_bad_rows(row, problem, tmp_path):
    good = RAW_ROWS["xcopa"][0]
    raw = _jsonl(tmp_path / "xcopa.jsonl", [good, row, good])
    out = tmp_path / "out.jsonl"
    result = run_tool_in_process("make_eval_prompts.py", "--dataset", "xcopa", "--language", "et", "--input", raw,
                                 "--output", out, check=False)
    assert result.returncode == 1
    assert f"{raw}:2: " in result.stderr and problem in result.stderr and "no output written" in result.stderr
    assert not out.exists()
    skipped = run_tool_in_process("make_eval_prompts.py", "--dataset", "xcopa", "--language", "et", "--input", raw,
                                  "--output", out, "--skip-bad-rows")
    assert f"wrote {2 * len(TEMPLATES['xcopa'])} examples" in skipped.stdout and "skipped rows: 1 " in skipped.stdout


GOOD = {"id": "a", "dataset": "d", "language": "en", "prompt": "p", "inputs": "Question?", "choices": ["x", "y"],
        "label": 1}


@pytest.mark.parametrize("change, problem", [
    ({"label": 2}, "label 2 is not an index into its 2 choices"),
    ({"label": -1}, "label -1 is not an index"),
    ({"label": True}, "label True is not an index"),
    ({"choices": ["only one"]}, "choices must be a list of at least two strings"),
    ({"choices": "xy"}, "choices must be a list"),
    ({"choices": ["x", ""]}, "choice 1 is empty"),
    ({"choices": ["x", 3]}, "choice 1 is empty or not a string"),
    ({"inputs": ""}, "inputs must be a non-empty string"),
    ({"language": 7}, "language must be a non-empty string, got 7"),
    ({"label": None, "dataset": None}, None),  # missing fields: named together
])
def test_a_bad_example_stops_the_read_naming_file_and_line(change, problem, tmp_path):
    bad = {k: v for k, v in {**GOOD, "id": "b", **change}.items() if v is not None}
    path = _jsonl(tmp_path / "tasks.jsonl", [GOOD, bad])
    with pytest.raises(ExampleError) as error:
        read_examples(path)
    assert str(error.value).startswith(f"{path}:2: ")
    assert (problem or "missing field(s) dataset, label") in str(error.value)


def test_duplicate_ids_bad_json_and_empty_inputs_are_refused(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    _jsonl(folder / "first.jsonl", [GOOD])
    _jsonl(folder / "second.jsonl", [GOOD])
    with pytest.raises(ExampleError, match=r"second\.jsonl:1: id 'a' already used at .*first\.jsonl:1"):
        read_examples(folder)
    with pytest.raises(ExampleError, match=r"bad\.jsonl:1: not valid JSON"):
        read_examples(_jsonl(tmp_path / "bad.jsonl", ["{"]))
    with pytest.raises(ExampleError, match="no such file or folder"):
        read_examples(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExampleError, match="without \\*.jsonl files"):
        read_examples(empty)


def test_inputs_of_the_same_name_would_share_ids_and_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _jsonl(tmp_path / folder / "test.jsonl", RAW_ROWS["xnli"])
    result = run_tool_in_process("make_eval_prompts.py", "--dataset", "xnli", "--language", "fr", "--input",
                                 tmp_path / "a" / "test.jsonl", tmp_path / "b" / "test.jsonl", "--output",
                                 tmp_path / "out.jsonl", check=False)
    assert result.returncode == 1 and "input files share a name (test.jsonl)" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_evaluate_refuses_a_bad_tasks_file_before_loading_a_model(demo_dir, tmp_path):
    path = _jsonl(tmp_path / "tasks.jsonl", [GOOD, {**GOOD, "id": "b", "label": 5}])
    result = run_tool_in_process("evaluate.py", "--tasks", path, "--hf-dir", tmp_path / "no_model",
                                 "--tokenizer-name-or-path", demo_dir / "tokenizer", check=False)
    assert result.returncode == 2
    assert f"error: {path}:2: label 5 is not an index into its 2 choices" in result.stderr
    (tmp_path / "baseline.json").write_text("[1, 2]")
    result = run_tool_in_process("evaluate.py", "--tasks", _jsonl(tmp_path / "good.jsonl", [GOOD]), "--hf-dir",
                                 tmp_path / "no_model", "--tokenizer-name-or-path", demo_dir / "tokenizer",
                                 "--baseline", tmp_path / "baseline.json", check=False)
    assert result.returncode == 2 and "not an --output-json of tools/evaluate.py" in result.stderr
    good = _jsonl(tmp_path / "good.jsonl", [GOOD])
    for listed, message in ((["not", "an object"], 'not a JSON object {"dataset": ["language", ...]}'),
                            ({"other": ["en"]}, f"no entry for the evaluated datasets {GOOD['dataset']}")):
        (tmp_path / "finetuned.json").write_text(json.dumps(listed))
        result = run_tool_in_process("evaluate.py", "--tasks", good, "--hf-dir", tmp_path / "no_model",
                                     "--tokenizer-name-or-path", demo_dir / "tokenizer",
                                     "--finetuned-languages", tmp_path / "finetuned.json", check=False)
        assert result.returncode == 2 and f"--finetuned-languages {tmp_path / 'finetuned.json'}: {message}" in result.stderr
