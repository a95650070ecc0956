"""The picture of an evaluation: one panel per dataset, a bar per language (the median accuracy
over prompts, coloured by the language's group: whether BLOOM pretrained on it, or whether the
finetune used it for that task), each prompt's accuracy as a
dot on its bar, and the dataset's chance accuracy as a dashed line; with a baseline report, its
medians as hollow bars behind (before/after a finetune). Written as PNG with matplotlib."""

from __future__ import annotations

from pathlib import Path

from megatron.evaluation.accuracy import grouping

COLOURS = {"seen": "#3b75af", "unseen": "#ef8636", "finetuned": "#3b75af", "held-out": "#ef8636"}
LEGEND = {"pretraining": ("seen in pretraining", "unseen"), "finetuning": ("finetuned in", "held out of the finetune")}


def plot_accuracy(report: dict, path: str | Path, title: str, baseline: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    datasets = list(report["median_over_prompts"])
    widths = [max(2, len(report["median_over_prompts"][d])) for d in datasets]
    figure, axes = plt.subplots(1, len(datasets), figsize=(1.2 + 0.55 * sum(widths), 3.6), squeeze=False,
                                gridspec_kw={"width_ratios": widths}, sharey=True)
    for ax, dataset in zip(axes[0], datasets):
        medians = report["median_over_prompts"][dataset]
        languages = list(medians)
        positions = range(len(languages))
        if baseline and dataset in baseline.get("median_over_prompts", {}):
            before = [baseline["median_over_prompts"][dataset].get(lang, float("nan")) for lang in languages]
            ax.bar(positions, before, width=0.8, fill=False, edgecolor="#888888", linestyle=":", label="baseline")
        ax.bar(positions, [medians[lang] for lang in languages], width=0.6,
               color=[COLOURS[report["language_groups"][dataset][lang]] for lang in languages])
        for x, lang in zip(positions, languages):
            prompts = list(report["accuracy_per_prompt"][dataset][lang].values())
            ax.scatter([x] * len(prompts), prompts, s=9, color="black", zorder=3)
        ax.axhline(report["chance"][dataset], color="#555555", linestyle="--", linewidth=1)
        ax.set_xticks(list(positions), languages, rotation=0)
        ax.set_title(f"{dataset}\nmean {report['mean_over_languages'][dataset]:.3f}", fontsize=10)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy (median over prompts)")
    labels = LEGEND[grouping(report)]
    legend = [Patch(color=COLOURS["seen"], label=labels[0]), Patch(color=COLOURS["unseen"], label=labels[1]),
              Patch(fill=False, edgecolor="#555555", linestyle="--", label="chance")]
    if baseline:
        legend.append(Patch(fill=False, edgecolor="#888888", linestyle=":", label="baseline"))
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
