"""The benchmark's plots: accuracy per arm, dev curves during training, the best run's confusion matrix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import metrics as task_metrics
from ..plots import pyplot

FAMILY_COLOURS = {"pretune": "#1f77b4", "transformers": "#7f7f7f", "peft": "#ff7f0e", "setfit": "#2ca02c"}
FAMILY_LINES = {"pretune": "-", "transformers": "--", "peft": ":"}  # the learning curves tell families apart by line


def write_plots(out: Path, prefix: str, task: str, summaries: list, published: list, published_source: str) -> dict:
    """Write a group's plots into `out` (names starting with `prefix`); returns their names for the report.
    `summaries` are the report's ArmSummary rows; `published`: (label, arm, mean, std) reference lines."""
    if pyplot() is None:  # matplotlib is an optional extra: the tables are written without figures
        return {}
    figures = {"accuracy": f"{prefix}accuracy.png"}
    _accuracy_plot(out / figures["accuracy"], task, summaries, published, published_source)
    if any(run["history"] for s in summaries for run in s.runs):
        figures["curves"] = f"{prefix}learning_curves.png"
        _curves_plot(out / figures["curves"], task, summaries)
    best = _best_run(summaries)
    if best is not None:
        figures["best"] = f"{best['key']['arm']}, seed {best['key']['seed']}"
        figures["confusion"] = f"{prefix}confusion_{slug(best['key']['arm'])}.png"
        _confusion_plot(out / figures["confusion"], best)
    return figures


def _accuracy_plot(path: Path, task: str, summaries: list, published: list, published_source: str) -> None:
    import matplotlib.pyplot as plt

    metric = summaries[0].metric
    fig, ax = plt.subplots(figsize=(1.2 * len(summaries) + 3, 4))
    positions = np.arange(len(summaries))
    ax.bar(positions, [100 * s.mean for s in summaries], yerr=[100 * s.std for s in summaries], capsize=4,
           color=[FAMILY_COLOURS.get(s.family, "#999999") for s in summaries])
    for position, s in zip(positions, summaries):
        ax.scatter([position] * len(s.values()), 100 * s.values(), color="black", s=8, zorder=3)
    for (label, _, mean, _), style in zip(published, ("--", ":", "-.")):
        ax.axhline(mean, linestyle=style, color="green", linewidth=1, label=f"LM-BFF {label} ({published_source})")
    for family in dict.fromkeys(s.family for s in summaries):
        ax.bar([0], [0], width=0, color=FAMILY_COLOURS.get(family, "#999999"), label=family)  # legend entry only
    ax.set_xticks(positions, [s.arm for s in summaries], rotation=20)
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(f"{task}: mean and std over seeds (dots: single seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: bars never hide it
    _save(fig, path)


def _curves_plot(path: Path, task: str, summaries: list) -> None:
    import matplotlib.pyplot as plt

    metric = summaries[0].metric
    fig, ax = plt.subplots(figsize=(9, 4))
    colours = plt.get_cmap("tab20").colors  # twenty distinct colours: the default cycle repeats after ten arms
    for index, s in enumerate(summaries):
        curves = [{row["step"]: row[f"dev_{metric}"] for row in run["history"] if f"dev_{metric}" in row}
                  for run in s.runs]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves and all(curves) else []
        if not steps:
            continue
        values = np.array([[100 * c[step] for step in steps] for c in curves])
        mean, std = values.mean(axis=0), values.std(axis=0)
        colour = colours[index % len(colours)]
        ax.plot(steps, mean, marker="o", markersize=3, color=colour, linestyle=FAMILY_LINES.get(s.family, "-"),
                label=f"{s.arm} ({s.family})")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.12, color=colour)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"dev {metric} (%)")
    ax.set_title(f"{task}: dev {metric} during training (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _best_run(summaries: list) -> dict | None:
    candidates = [run for s in summaries for run in s.runs if run.get("predictions") is not None]
    classification = [run for run in candidates if all(isinstance(t, int) for t in run["targets"])]
    if not classification:
        return None
    return max(classification, key=lambda run: run["test"][run["metric"]])


def _confusion_plot(path: Path, run: dict) -> None:
    import matplotlib.pyplot as plt

    labels = run.get("labels") or [str(i) for i in range(1 + max(run["targets"] + run["predictions"]))]
    matrix = task_metrics.confusion_matrix(run["predictions"], run["targets"], len(labels))
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2.5, 1.1 * len(labels) + 2))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    key = run["key"]
    ax.set_title(f"{key['task']}: {key['arm']}, seed {key['seed']} ({run['metric']} {100 * run['test'][run['metric']]:.1f})",
                 fontsize=9)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    # A tight bounding box keeps the legends placed beside the axes, which tight_layout cannot fit
    # into a narrow figure (a report with few arms).
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")
