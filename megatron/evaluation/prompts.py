"""English prompt templates for the four multilingual held-out datasets of the BLOOMZ paper,
written for this project in the spirit of its English prompts (five per dataset), and the raw
rows they render: each dataset's fields as the HF hub's `datasets` export them to json lines.

`render(dataset, row, where)` gives `(prompt name, inputs, choices, label)` for every template;
a row missing a field, or with a label outside its choices, raises RowError naming `where`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


class RowError(ValueError):
    """A raw dataset row that cannot be rendered; `reason` is a short kind, for counted skips."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Template:
    name: str
    inputs: Callable[[dict], str]
    choices: Callable[[dict], list[str]]


def _copa_connective(row: dict) -> str:
    return {"cause": "because", "effect": "so"}[row["question"]]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _story(row: dict) -> str:
    return " ".join(row[f"input_sentence_{i}"] for i in range(1, 5))


def _options(row: dict) -> list[str]:
    return [row["option1"], row["option2"]]


TEMPLATES: dict[str, list[Template]] = {
    "xcopa": [
        Template("best_option", lambda r: f"{r['premise']}\nWhat was the {r['question']}? Pick the more plausible "
                 f"option:\n- {r['choice1']}\n- {r['choice2']}\nAnswer:", lambda r: [r["choice1"], r["choice2"]]),
        Template("connective", lambda r: f"{r['premise'].rstrip('.')} {_copa_connective(r)}...",
                 lambda r: [_lower_first(r["choice1"]), _lower_first(r["choice2"])]),
        Template("which_is_more_likely", lambda r: f"Premise: {r['premise']}\nWhich is the more likely "
                 f"{r['question']}: \"{r['choice1']}\" or \"{r['choice2']}\"?", lambda r: [r["choice1"], r["choice2"]]),
        Template("plausible_alternatives", lambda r: f"{r['premise']} What happened as the {r['question']}?\n"
                 f"Alternatives: {r['choice1']} | {r['choice2']}", lambda r: [r["choice1"], r["choice2"]]),
        Template("choose_the_sentence", lambda r: f"Choose the sentence that is the {r['question']} of \""
                 f"{r['premise']}\":", lambda r: [r["choice1"], r["choice2"]]),
    ],
    "xnli": [
        Template("does_it_follow", lambda r: f"{r['premise']}\nQuestion: Does it follow that \"{r['hypothesis']}\"? "
                 "Yes, maybe, or no?", lambda r: ["Yes", "Maybe", "No"]),
        Template("guaranteed_true", lambda r: f"Given that \"{r['premise']}\", is it guaranteed true that "
                 f"\"{r['hypothesis']}\"? Yes, maybe, or no?", lambda r: ["Yes", "Maybe", "No"]),
        Template("true_false_neither", lambda r: f"{r['premise']}\nBased on that, is \"{r['hypothesis']}\" true, "
                 "false, or neither?", lambda r: ["True", "Neither", "False"]),
        Template("imply", lambda r: f"Premise: {r['premise']}\nHypothesis: {r['hypothesis']}\nDoes the premise "
                 "imply the hypothesis? Yes, maybe, or no?", lambda r: ["Yes", "Maybe", "No"]),
        Template("always_sometimes_never", lambda r: f"Suppose it is true that \"{r['premise']}\". Then "
                 f"\"{r['hypothesis']}\" is always, sometimes, or never true?",
                 lambda r: ["Always", "Sometimes", "Never"]),
    ],
    "xstory_cloze": [
        Template("continue_the_story", lambda r: f"{_story(r)}\nHow does the story continue?",
                 lambda r: [r["sentence_quiz1"], r["sentence_quiz2"]]),
        Template("choose_the_ending", lambda r: f"{_story(r)}\nChoose the best ending:\n- {r['sentence_quiz1']}\n"
                 f"- {r['sentence_quiz2']}\nEnding:", lambda r: [r["sentence_quiz1"], r["sentence_quiz2"]]),
        Template("story_then", lambda r: _story(r), lambda r: [r["sentence_quiz1"], r["sentence_quiz2"]]),
        Template("what_happens_next", lambda r: f"Story: {_story(r)}\nWhat happens next: \"{r['sentence_quiz1']}\" "
                 f"or \"{r['sentence_quiz2']}\"?", lambda r: [r["sentence_quiz1"], r["sentence_quiz2"]]),
        Template("novel_ending", lambda r: f"Read the beginning of a short story and pick the sentence that ends it.\n"
                 f"{_story(r)}", lambda r: [r["sentence_quiz1"], r["sentence_quiz2"]]),
    ],
    "xwinograd": [
        Template("replace_the_blank", lambda r: f"{r['sentence']}\nReplace the _ in the sentence above with the "
                 f"correct option:\n- {r['option1']}\n- {r['option2']}\nAnswer:", _options),
        Template("who_is_meant", lambda r: f"In the sentence \"{r['sentence']}\", who or what is the _: "
                 f"{r['option1']} or {r['option2']}?", _options),
        Template("fill_in", lambda r: f"Fill in the blank: {r['sentence']}\nThe blank is", _options),
        Template("underscore_refers_to", lambda r: f"{r['sentence']}\nIn the previous sentence, does _ refer to "
                 f"{r['option1']} or {r['option2']}?", _options),
        Template("stand_for", lambda r: f"{r['sentence']}\nWhat does the _ stand for?", _options),
    ],
}
DATASETS = tuple(TEMPLATES)

# (the fields a row needs, its label as a choice index) per dataset
_FIELDS = {
    "xcopa": ("premise", "choice1", "choice2", "question", "label"),
    "xnli": ("premise", "hypothesis", "label"),
    "xstory_cloze": ("input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4",
                     "sentence_quiz1", "sentence_quiz2", "answer_right_ending"),
    "xwinograd": ("sentence", "option1", "option2", "answer"),
}
_LABEL: dict[str, Callable[[dict], object]] = {
    "xcopa": lambda r: r["label"],
    "xnli": lambda r: r["label"],  # 0 entailment, 1 neutral, 2 contradiction
    "xstory_cloze": lambda r: _as_int(r["answer_right_ending"]) - 1,  # 1 or 2
    "xwinograd": lambda r: _as_int(r["answer"]) - 1,  # "1" or "2"
}


_LABEL_FIELDS = {"label", "answer", "answer_right_ending"}


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    return int(value)


def render(dataset: str, row, where: str) -> Iterator[tuple[str, str, list[str], int]]:
    """`(prompt name, inputs, choices, label)` of `row` for each of the dataset's templates."""
    if not isinstance(row, dict):
        raise RowError(f"{where}: expected a JSON object, got {type(row).__name__}", "not an object")
    missing = [name for name in _FIELDS[dataset] if name not in row or row[name] is None]
    if missing:
        raise RowError(f"{where}: missing field(s) {', '.join(missing)} of a {dataset} row", "missing field")
    not_text = [name for name in _FIELDS[dataset] if name not in _LABEL_FIELDS and not isinstance(row[name], str)]
    if not_text:
        raise RowError(f"{where}: field(s) {', '.join(not_text)} must be text", "not text")
    empty = [name for name in _FIELDS[dataset] if isinstance(row[name], str) and not row[name].strip()]
    if empty:
        raise RowError(f"{where}: empty field(s) {', '.join(empty)}", "empty field")
    if dataset == "xcopa" and row["question"] not in ("cause", "effect"):
        raise RowError(f"{where}: question {row['question']!r} is neither 'cause' nor 'effect'", "bad question")
    try:
        label = _LABEL[dataset](row)
    except (TypeError, ValueError):
        label = None
    for template in TEMPLATES[dataset]:
        choices = template.choices(row)
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise RowError(f"{where}: label {row[_FIELDS[dataset][-1]]!r} is not one of its {len(choices)} choices",
                           "label out of range")
        yield template.name, template.inputs(row), choices, label
