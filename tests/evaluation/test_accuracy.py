"""Rank classification and the aggregates of `megatron/evaluation/accuracy.py` on hand-made
numbers: ties, length normalisation, medians over an odd and an even number of prompts, the
seen/unseen grouping of BLOOM's pretraining languages, and the text table."""

from __future__ import annotations

import numpy as np
import pytest

from megatron.evaluation.accuracy import accuracy_report, format_table, predictions
from megatron.evaluation.examples import ChoiceExample
from megatron.evaluation.languages import pretraining_group


def test_the_highest_sum_wins_ties_go_to_the_lower_index_and_length_normalisation_divides():
    # example 0: choices scored -3, -1, -1 (a tie between 1 and 2); example 1: -4 over 4 tokens vs -2 over 1
    scores = np.array([-3.0, -1.0, -1.0, -4.0, -2.0])
    lengths = np.array([1, 1, 1, 4, 1])
    first_pair = np.array([0, 3, 5])
    per_example, predicted = predictions(scores, lengths, first_pair, length_normalize=False)
    assert per_example == [[-3.0, -1.0, -1.0], [-4.0, -2.0]]
    assert predicted == [1, 1]
    per_example, predicted = predictions(scores, lengths, first_pair, length_normalize=True)
    assert per_example[1] == [-1.0, -2.0]
    assert predicted == [1, 0]


def _examples(spec: dict[tuple[str, str, str], list[bool]]) -> tuple[list[ChoiceExample], list[int]]:
    """Examples (label 0, two choices) predicted right or wrong as `spec` lists them."""
    examples, predicted = [], []
    for (dataset, language, prompt), hits in spec.items():
        for i, hit in enumerate(hits):
            examples.append(ChoiceExample(f"{dataset}/{language}/{prompt}/{i}", dataset, language, prompt, "q",
                                          ("a", "b"), 0))
            predicted.append(0 if hit else 1)
    return examples, predicted


def test_medians_over_prompts_means_over_languages_and_the_seen_unseen_split():
    T, F = True, False
    spec = {
        # xnli/en: three prompts at 1/4, 3/4, 2/4 -> median 0.5 (odd count)
        ("xnli", "en", "p1"): [T, F, F, F], ("xnli", "en", "p2"): [T, T, T, F], ("xnli", "en", "p3"): [T, T, F, F],
        # xnli/de: two prompts at 1 and 0.5 -> median 0.75 (even count: the mean of the middle two)
        ("xnli", "de", "p1"): [T, T], ("xnli", "de", "p2"): [T, F],
        # xnli/th: one prompt at 0
        ("xnli", "th", "p1"): [F, F],
        # xcopa/zh: four prompts 0, 1, 1, 0.5 -> median 0.75
        ("xcopa", "zh", "p1"): [F], ("xcopa", "zh", "p2"): [T], ("xcopa", "zh", "p3"): [T],
        ("xcopa", "zh", "p4"): [T, F],
    }
    report = accuracy_report(*_examples(spec))
    assert report["accuracy_per_prompt"]["xnli"]["en"] == {"p1": 0.25, "p2": 0.75, "p3": 0.5}
    assert report["median_over_prompts"] == {"xcopa": {"zh": 0.75}, "xnli": {"de": 0.75, "en": 0.5, "th": 0.0}}
    assert report["mean_over_languages"] == pytest.approx({"xcopa": 0.75, "xnli": 1.25 / 3})
    # en is in BLOOM's pretraining, de and th are not
    assert report["mean_by_pretraining_languages"]["xnli"] == pytest.approx({"seen": 0.5, "unseen": 0.375})
    assert report["mean_by_pretraining_languages"]["xcopa"] == {"seen": 0.75}
    assert report["average"] == pytest.approx((0.75 + 1.25 / 3) / 2)
    assert report["chance"] == {"xcopa": 0.5, "xnli": 0.5}
    assert report["examples"] == sum(len(hits) for hits in spec.values())

    table = format_table(report, baseline={"median_over_prompts": {"xnli": {"en": 0.25}}})
    en = next(line.split() for line in table.splitlines() if line.startswith("xnli") and " en " in line)
    assert en == ["xnli", "en", "3", "seen", "0.250", "0.500", "+0.250"]
    assert any(line.split()[:2] == ["xcopa", "zh"] and line.split()[-1] == "n/a" for line in table.splitlines())


def test_languages_grouped_by_what_the_finetune_used():
    """Given the languages each dataset's task was finetuned in, the means, the table's group
    column and the groups split into those and the held-out ones (not BLOOM's pretraining)."""
    T, F = True, False
    spec = {("xnli", "en", "p1"): [T, F], ("xnli", "de", "p1"): [T, T], ("xnli", "th", "p1"): [F, F],
            ("xcopa", "zh", "p1"): [T, F]}
    report = accuracy_report(*_examples(spec), finetuned_languages={"xnli": ["EN", "de"], "xcopa": []})
    assert "mean_by_pretraining_languages" not in report
    assert report["mean_by_finetuning_languages"] == {"xnli": {"finetuned": 0.75, "held-out": 0.0},
                                                      "xcopa": {"held-out": 0.5}}
    assert report["language_groups"]["xnli"] == {"de": "finetuned", "en": "finetuned", "th": "held-out"}
    table = [line.split() for line in format_table(report).splitlines()]
    assert table[0] == ["dataset", "language", "prompts", "finetune", "accuracy"]
    assert ["xnli", "th", "1", "held-out", "0.000"] in table and ["xnli", "de", "1", "finetuned", "1.000"] in table


@pytest.mark.parametrize("code, group", [("en", "seen"), ("zh-cn", "seen"), ("ZH", "seen"), ("sw", "seen"),
                                         ("jp", "unseen"), ("ru", "unseen"), ("th", "unseen"), ("et", "unseen"),
                                         ("eu", "seen"), ("yo", "seen"), ("de", "unseen")])
def test_bloom_pretraining_languages(code, group):
    assert pretraining_group(code) == group
