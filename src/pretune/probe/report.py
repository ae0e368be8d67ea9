"""A probe folder's results: per-relation records summed up as JSON, Markdown and plots.

Macro P@1 is the mean over relations of each relation's P@1 on its test facts (relations without
a test set, or with no single-token test fact, are left out of it). With prompt variants, a
relation's spread is the standard deviation of P@1 across its wordings (population std; the
range, max - min, is reported beside it).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..plots import pyplot
from ..runs import atomic_write_text


def load_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "relations").glob("*.json"))]


def summarize(records: list[dict]) -> dict:
    """Per-relation P@1 (first wording), macro and micro averages, kept-fact counts, cost, spread."""
    rows, spreads = [], {}
    for record in records:
        run = record["runs"][0]
        rows.append({
            "relation": record["relation"],
            "test_p_at_1": run["test_p_at_1"],
            "dev_p_at_1": run["dev_p_at_1"],
            "test_kept": record["counts"]["test"]["kept"],
            "test_used": record["counts"]["test"].get("used", record["counts"]["test"]["kept"]),
            "test_total": record["counts"]["test"]["total"],
            "train_seconds": sum(r["train_seconds"] for r in record["runs"]),
            "adapter_bytes": run["adapter_bytes"],
            "trained_parameters": run["trained_parameters"],
        })
        scores = [r["test_p_at_1"] for r in record["runs"] if r["test_p_at_1"] is not None]
        if len(scores) > 1:
            spreads[record["relation"]] = {
                "patterns": [r["pattern"] for r in record["runs"]],
                "p_at_1": scores,
                "mean": statistics.fmean(scores),
                "std": statistics.pstdev(scores),
                "range": max(scores) - min(scores),
            }
    tested = [r for r in rows if r["test_p_at_1"] is not None]
    kept = sum(r["test_kept"] for r in tested)
    used = sum(r["test_used"] for r in tested)
    summary = {
        "relations_with_test": len(tested),
        "macro_p_at_1": statistics.fmean(r["test_p_at_1"] for r in tested) if tested else None,
        "micro_p_at_1": sum(r["test_p_at_1"] * r["test_used"] for r in tested) / used if used else None,
        "test_facts_kept": kept,
        "test_facts_used": used,
        "test_facts_total": sum(r["test_total"] for r in rows),
        "train_seconds": sum(r["train_seconds"] for r in rows),
        "adapter_bytes": sum(r["adapter_bytes"] for r in rows),
        "relations": rows,
    }
    if spreads:
        summary["spread"] = {
            "mean_p_at_1": statistics.fmean(s["mean"] for s in spreads.values()),
            "mean_std": statistics.fmean(s["std"] for s in spreads.values()),
            "mean_range": statistics.fmean(s["range"] for s in spreads.values()),
            "per_relation": spreads,
        }
    return summary


def write_summary(out: Path, config) -> dict:
    records = load_records(out)
    done = {r["relation"] for r in records}
    summary = {"config": config.identity(), **summarize(records)}
    wanted = config.relations
    summary["missing"] = [r for r in wanted if r not in done] if wanted else []
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "results.md", markdown(summary, f"{config.model} {config.method}"))
    plot_summary(summary, out / "p_at_1.png", f"{config.model} {config.method}")
    return summary


def _number(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict, title: str) -> str:
    lines = [
        f"# LAMA probe: {title}", "",
        f"Macro P@1 over {summary['relations_with_test']} relations with a test set: "
        f"**{_number(summary['macro_p_at_1'])}** (micro {_number(summary['micro_p_at_1'])}); "
        f"test facts whose object is one token: {summary['test_facts_kept']} of {summary['test_facts_total']}, "
        f"{summary['test_facts_used']} of them evaluated.",
        f"Training {summary['train_seconds']:.0f} s in all; adapters {summary['adapter_bytes']:,} bytes in all.", "",
        "| relation | test P@1 | dev P@1 | test facts single-token/all (evaluated) | train s | adapter bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["relations"]:
        lines.append(f"| {r['relation']} | {_number(r['test_p_at_1'])} | {_number(r['dev_p_at_1'])} | "
                     f"{r['test_kept']}/{r['test_total']} ({r['test_used']}) | {r['train_seconds']:.0f} | {r['adapter_bytes']:,} |")
    if "spread" in summary:
        spread = summary["spread"]
        lines += ["", f"Spread across prompt wordings: mean std {spread['mean_std']:.2f}, "
                  f"mean range {spread['mean_range']:.2f} points.", "",
                  "| relation | wording | test P@1 |", "|---|---|---:|"]
        for relation, s in spread["per_relation"].items():
            for pattern, score in zip(s["patterns"], s["p_at_1"]):
                lines.append(f"| {relation} | `{pattern}` | {score:.1f} |")
    return "\n".join(lines) + "\n"


def plot_relation(record: dict, path: Path) -> None:
    """Dev P@1 over training steps per wording, test P@1 as a marker at the chosen step."""
    plt = pyplot()
    if plt is None:  # matplotlib is an optional extra: results.json and results.md carry the numbers
        return
    figure, axes = plt.subplots(figsize=(5, 3.2))
    for index, run in enumerate(record["runs"]):
        steps, scores = zip(*run["curve"]) if run["curve"] else ([0], [run["dev_p_at_1"] or 0.0])
        line = axes.plot(steps, scores, marker=".", label=f"dev, prompt {index}")[0]
        if run["test_p_at_1"] is not None:
            axes.plot([run["best_step"]], [run["test_p_at_1"]], marker="*", markersize=10, color=line.get_color(),
                      linestyle="none", label=f"test, prompt {index}")
    axes.set(xlabel="training step", ylabel="P@1 (%)", title=f"{record['relation']}")
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_summary(summary: dict, path: Path, title: str) -> None:
    rows = [r for r in summary["relations"] if r["test_p_at_1"] is not None]
    if not rows:
        return
    plt = pyplot()
    if plt is None:  # matplotlib is an optional extra: results.json and results.md carry the numbers
        return
    figure, axes = plt.subplots(figsize=(max(5, 0.3 * len(rows)), 3.2))
    axes.bar([r["relation"] for r in rows], [r["test_p_at_1"] for r in rows])
    axes.set(ylabel="test P@1 (%)", title=f"{title}: macro {_number(summary['macro_p_at_1'])}")
    axes.tick_params(axis="x", rotation=90, labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
