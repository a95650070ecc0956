"""Rank classification and its aggregates, as the BLOOMZ paper reports zero-shot results (t-zero's
rule): the choice with the highest summed log-probability wins (`length_normalize`: divided by its
token count), ties going to the lower index; accuracy per (dataset, language, prompt), the median
over prompts per (dataset, language) (the mean of the middle two for an even count), the mean of
those over languages per dataset, the same mean over BLOOM's seen and unseen languages apart
(`languages.py`; or, given the languages each dataset's task was finetuned in, over those and the
held-out ones), the mean over datasets, and each dataset's chance accuracy (the mean of
1 / number of choices)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from megatron.evaluation.examples import ChoiceExample
from megatron.evaluation.languages import finetuning_group, pretraining_group


def predictions(pair_scores: np.ndarray, choice_lengths: np.ndarray, first_pair: np.ndarray,
                length_normalize: bool) -> tuple[list[list[float]], list[int]]:
    """Each example's choice scores (pairs `first_pair[e]:first_pair[e + 1]`) and its prediction."""
    scores = pair_scores / choice_lengths if length_normalize else pair_scores
    per_example = [scores[first_pair[e]:first_pair[e + 1]].tolist() for e in range(len(first_pair) - 1)]
    return per_example, [int(np.argmax(s)) for s in per_example]  # argmax: the first of equal maxima


def _mean(values) -> float:
    return float(statistics.fmean(values))


def accuracy_report(examples: Sequence[ChoiceExample], predicted: Sequence[int],
                    finetuned_languages: Mapping[str, Collection[str]] | None = None) -> dict:
    """The aggregates of an evaluation, as `tools/evaluate.py --output-json` writes them; languages
    are grouped by BLOOM's pretraining, or with `finetuned_languages` (per dataset, the languages
    its task was finetuned in; every dataset listed) by whether the finetune used them."""
    correct: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    chance: dict[str, list[float]] = defaultdict(list)
    for example, prediction in zip(examples, predicted):
        correct[example.dataset, example.language, example.prompt].append(prediction == example.label)
        chance[example.dataset].append(1 / len(example.choices))
    per_prompt: dict = defaultdict(lambda: defaultdict(dict))
    for (dataset, language, prompt), hits in sorted(correct.items()):
        per_prompt[dataset][language][prompt] = _mean(hits)
    median = {dataset: {language: float(statistics.median(prompts.values())) for language, prompts in languages.items()}
              for dataset, languages in per_prompt.items()}
    language_groups = {dataset: {language: pretraining_group(language) if finetuned_languages is None
                                 else finetuning_group(language, finetuned_languages[dataset])
                                 for language in languages} for dataset, languages in median.items()}
    by_group = {}
    for dataset, languages in median.items():
        groups = defaultdict(list)
        for language, value in languages.items():
            groups[language_groups[dataset][language]].append(value)
        by_group[dataset] = {group: _mean(values) for group, values in sorted(groups.items())}
    mean_over_languages = {dataset: _mean(languages.values()) for dataset, languages in median.items()}
    return {
        "examples": len(examples),
        "accuracy_per_prompt": {d: dict(languages) for d, languages in per_prompt.items()},
        "median_over_prompts": median,
        "mean_over_languages": mean_over_languages,
        "language_groups": language_groups,
        f"mean_by_{'pretraining' if finetuned_languages is None else 'finetuning'}_languages": by_group,
        "average": _mean(mean_over_languages.values()),
        "chance": {dataset: _mean(values) for dataset, values in sorted(chance.items())},
    }


def grouping(report: dict) -> str:
    """How a report grouped its languages: 'pretraining' (BLOOM's) or 'finetuning'."""
    return "pretraining" if "mean_by_pretraining_languages" in report else "finetuning"


def format_table(report: dict, baseline: dict | None = None) -> str:
    """The medians over prompts per dataset and language (and the dataset means) as a text table;
    with `baseline` (another report), its column and the difference beside them. The fourth
    column is the language's group: seen/unseen in pretraining, or finetuned/held-out."""
    group = "seen" if grouping(report) == "pretraining" else "finetune"
    header = ["dataset", "language", "prompts", group] + (["baseline", "accuracy", "change"] if baseline
                                                          else ["accuracy"])
    lines = []
    for dataset, languages in report["median_over_prompts"].items():
        rows = [(language, len(report["accuracy_per_prompt"][dataset][language]),
                 report["language_groups"][dataset][language], value, ("median_over_prompts", dataset, language))
                for language, value in languages.items()]
        rows.append(("mean", "", "", report["mean_over_languages"][dataset], ("mean_over_languages", dataset)))
        for language, prompts, group, value, key in rows:
            cells = [dataset, language, str(prompts), group]
            if baseline:
                before = _lookup(baseline, key)
                cells += ["n/a" if before is None else f"{before:.3f}", f"{value:.3f}",
                          "n/a" if before is None else f"{value - before:+.3f}"]
            else:
                cells.append(f"{value:.3f}")
            lines.append(cells)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *lines])


def _lookup(report: dict, key: tuple) -> float | None:
    value = report
    for part in key:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
