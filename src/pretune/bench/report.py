"""The benchmark's report: results.csv, report.md with its tables, and the PNG plots (`plots`).

Per (model, task): one row per arm with the metric's mean (std) over seeds, the cost columns, and
LM-BFF's published numbers beside them; `accuracy.png` (mean and std per arm),
`learning_curves.png` (dev metric over training steps) and `confusion_<arm>.png` (the best run).
Several tasks add one summary table shaped like LM-BFF's Table 3 (arms x tasks).

Standard deviations are population standard deviations (ddof=0), as LM-BFF computes them
(numpy's default in its tools/gather_result.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runs import atomic_write_text
from . import plots
from .plots import slug as _slug

# LM-BFF (Gao et al. 2021) Table 3: RoBERTa-large (355M), K=16, mean (std) over 5 seeds. Published,
# not re-run here; copied from ../shared/data/README.md unless noted. (label, the arm it compares to, mean, std)
PUBLISHED = {
    "sst-2": [("fine-tuning", "hf-full", 81.4, 3.8), ("prompt-based fine-tuning", "pet", 92.7, 0.9),
              ("zero-shot prompt", "zero-shot", 83.6, None)],
    "sst-5": [("prompt-based fine-tuning", "pet", 47.4, 2.5)],
    "mr": [("prompt-based fine-tuning", "pet", 87.0, 1.2)],
    "subj": [("prompt-based fine-tuning", "pet", 91.2, 1.1)],
    "trec": [("prompt-based fine-tuning", "pet", 84.8, 5.1)],
    "rte": [("prompt-based fine-tuning", "pet", 69.1, 3.6)],
    # MRPC (F1) and QNLI as LM-BFF's Table 3 gives them, quoted in github.com/OliverXUZY/LM-BFF metaLM.md
    "mrpc": [("prompt-based fine-tuning", "pet", 74.5, 5.3)],
    "qnli": [("prompt-based fine-tuning", "pet", 64.5, 4.2)],
}
PUBLISHED_SOURCE = "published, RoBERTa-large, not re-run"
NO_FIGURES = "(No figures: matplotlib is not installed; `pip install 'pretune[plots]'`, then rerun with --report-only.)"
CSV_COLUMNS = [
    "task", "model", "arm", "seed", "config", "metric", "test", "dev", "trainable_parameters", "adapter_bytes",
    "train_seconds", "train_examples_per_second", "eval_examples_per_second", "peak_rss_mib", "loadavg_1min",
]


@dataclass
class ArmSummary:
    arm: str
    family: str
    metric: str
    runs: list[dict]

    def values(self, split: str = "test") -> np.ndarray:
        return np.array([run[split][self.metric] for run in self.runs if run.get(split)], dtype=float)

    @property
    def mean(self) -> float:
        return float(self.values().mean())

    @property
    def std(self) -> float:
        return float(self.values().std(ddof=0))  # population std, as LM-BFF reports

    def average(self, name: str) -> float | None:
        values = [run[name] for run in self.runs if run.get(name) is not None]
        return float(np.mean(values)) if values else None

    def peak_rss(self) -> float:
        return max(run["peak_rss_mib"] for run in self.runs)

    def load(self) -> float:
        return float(np.mean([_load_during(run) for run in self.runs]))


def _load_during(run: dict) -> float:
    """The 1-minute load average around a run: the larger of before and after."""
    return max(run["loadavg_before"][0], run["loadavg_after"][0])


# ---------------------------------------------------------------- entry point


def write_report(out: Path, runs: list[dict], current_keys: list[dict], arms: dict[str, dict],
                 skipped: dict[str, str] | None = None, failures: list[dict] | None = None) -> Path:
    """Write results.csv, report.md and the plots for the runs that `current_keys` selects."""
    out = Path(out)
    wanted = {tuple(sorted(key.items())) for key in current_keys}
    selected = [run for run in runs if tuple(sorted(run["key"].items())) in wanted]
    groups = _group(selected, list(arms))
    atomic_write_text(out / "results.csv", _csv(selected))
    for stale in out.glob("*confusion_*.png"):
        stale.unlink()  # the best run may have changed since the last report
    sections = []
    for (model, task), summaries in groups.items():
        prefix = "" if len(groups) == 1 else f"{_slug(task)}_{_slug(model)}_"
        figures = plots.write_plots(out, prefix, task, summaries, PUBLISHED.get(task, []), PUBLISHED_SOURCE)
        sections.append(_section(model, task, summaries, arms, figures))
    text = _markdown(groups, sections, selected, arms, skipped or {}, failures or [])
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def _group(runs: list[dict], arm_order: list[str]) -> dict[tuple[str, str], list[ArmSummary]]:
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for run in runs:
        key = run["key"]
        # An anchor arm on its own model (head-mpnet, setfit-mpnet) sits beside the arms of the benchmark's model.
        groups.setdefault((run.get("bench_model", key["model"]), key["task"]), {}).setdefault(key["arm"], []).append(run)
    rank = {name: i for i, name in enumerate(arm_order)}
    result = {}
    for group, by_arm in groups.items():
        names = sorted(by_arm, key=lambda name: rank.get(name, len(rank)))
        result[group] = [
            ArmSummary(name, by_arm[name][0]["arm_info"]["family"], by_arm[name][0]["metric"],
                       sorted(by_arm[name], key=lambda r: r["key"]["seed"]))
            for name in names
        ]
    return result


# ---------------------------------------------------------------- tables


def _csv(runs: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in sorted(runs, key=lambda r: (r["key"]["task"], r["key"]["arm"], r["key"]["seed"])):
        key, metric = run["key"], run["metric"]
        writer.writerow([
            key["task"], key["model"], key["arm"], key["seed"], key["config"], metric, run["test"][metric],
            (run.get("dev") or {}).get(metric, ""), run["trainable_parameters"], run["adapter_bytes"],
            run["train_seconds"], run["train_examples_per_second"] or "", run["eval_examples_per_second"],
            run["peak_rss_mib"], _load_during(run),
        ])
    return buffer.getvalue()


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _mean_std(summary: ArmSummary) -> str:
    return f"{_percent(summary.mean)} ({_percent(summary.std)})"


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def _arm_table(summaries: list[ArmSummary], task: str) -> list[str]:
    metric = summaries[0].metric
    lines = [
        f"| arm | from | test {metric} mean (std) | dev {metric} | seeds | trainable params | saved weights "
        "| train s | train ex/s | eval ex/s | peak RSS MiB (max over seeds) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        dev = s.values("dev")
        lines.append(
            f"| {s.arm} | {s.family} | {_mean_std(s)} | {_percent(float(dev.mean()) if dev.size else None)} "
            f"| {len(s.runs)} | {int(np.median([r['trainable_parameters'] for r in s.runs])):,} "
            f"| {_size(np.median([r['adapter_bytes'] for r in s.runs]))} | {_number(s.average('train_seconds'))} "
            f"| {_number(s.average('train_examples_per_second'))} | {_number(s.average('eval_examples_per_second'))} "
            f"| {_number(s.peak_rss(), 0)} | {s.load():.1f} |"
        )
    for label, _, mean, std in PUBLISHED.get(task, []):
        seeds = "5" if std is not None else "–"  # LM-BFF's zero-shot result is one number
        lines.append(f"| LM-BFF {label} | {PUBLISHED_SOURCE} | {_published(mean, std)} | | {seeds} | | | | | | | |")
    return lines


def _published(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" + (f" ({std:.1f})" if std is not None else "")


def _summary_table(groups: dict[tuple[str, str], list[ArmSummary]]) -> list[str]:
    """LM-BFF Table 3's shape: one row per arm, one column per task, mean (std) in each cell."""
    columns = list(groups)
    arms: list[str] = []
    for summaries in groups.values():
        arms += [s.arm for s in summaries if s.arm not in arms]
    header = "| arm | " + " | ".join(f"{task} ({model})" for model, task in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for arm in arms:
        cells = []
        for group in columns:
            found = [s for s in groups[group] if s.arm == arm]
            cells.append(_mean_std(found[0]) if found else "–")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for label in dict.fromkeys(label for _, task in columns for label, *_ in PUBLISHED.get(task, [])):
        cells = []
        for _, task in columns:
            match = [(mean, std) for name, _, mean, std in PUBLISHED.get(task, []) if name == label]
            cells.append(_published(*match[0]) if match else "–")
        lines.append(f"| LM-BFF {label} ({PUBLISHED_SOURCE}) | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- Markdown


def _section(model: str, task: str, summaries: list[ArmSummary], arms: dict[str, dict], figures: dict) -> str:
    runs = [run for s in summaries for run in s.runs]
    examples = len(runs[0]["targets"])
    seeds = sorted({run["key"]["seed"] for run in runs})
    lines = [
        f"## {task} — {model}",
        "",
        f"Test set: {examples} examples{_sample_note(runs, examples)}; seeds {', '.join(map(str, seeds))}; metric ×100, mean (population std) over seeds.",
        "",
        *_arm_table(summaries, task),
        "",
        f"![{task}: {summaries[0].metric} per arm]({figures['accuracy']})" if figures else NO_FIGURES,
        "",
    ]
    if figures.get("curves"):
        lines += [f"![{task}: dev {summaries[0].metric} during training]({figures['curves']})", ""]
    if figures.get("confusion"):
        lines += [f"Confusion matrix of the best run ({figures['best']}):", "", f"![confusion]({figures['confusion']})", ""]
    return "\n".join(lines)


def _sample_note(runs: list[dict], examples: int) -> str:
    size = runs[0]["protocol"].get("test_sample")
    if size is None or examples < size:
        return ""
    return " (a fixed random sample of the larger test set, the same for every arm and seed)"


def _markdown(groups, sections, runs, arms, skipped, failures) -> str:
    protocol = runs[0]["protocol"] if runs else {}
    lines = [
        "# Few-shot benchmark",
        "",
        "Made by `pretune bench`. Every (arm, seed) trains on the LM-BFF split `K-<seed>` (train, and a dev set "
        "of the same size) with training seed `<seed>`, keeps its best state on dev, and is evaluated once on test. "
        f"Shared protocol: {protocol.get('steps')} optimizer steps, batch size {protocol.get('batch_size')}, "
        f"evaluation batch size {protocol.get('eval_batch_size')}"
        + (f", {protocol['shots']} examples per class sampled per seed" if protocol.get("shots") else "")
        + (f"; test sets larger than {protocol['test_sample']} examples are replaced by a fixed random sample of that "
           "many (seed 0), shared by every arm and seed" if protocol.get("test_sample") else "") + ". "
        f"Torch threads per run: {', '.join(sorted({str(run.get('torch_threads')) for run in runs}))}.",
        "",
    ]
    if len(groups) > 1:
        lines += ["## Summary (LM-BFF Table 3 layout)", "", *_summary_table(groups), ""]
    lines += sections
    lines += _arm_notes(groups, arms)
    lines += _column_notes()
    if skipped:
        lines += ["Arms skipped in this version:", ""] + [f"- `{k}`: {v}" for k, v in skipped.items()] + [""]
    if failures:
        lines += ["Runs that failed (rerun the same command to retry them):", ""]
        lines += [f"- {f['key']['task']} {f['key']['arm']} seed {f['key']['seed']}: {f['error']} (log: {f['log']})"
                  for f in failures] + [""]
    return "\n".join(lines)


def _arm_notes(groups, arms: dict[str, dict]) -> list[str]:
    present = dict.fromkeys(s.arm for summaries in groups.values() for s in summaries)
    lines = ["## Arms", ""]
    for name in present:
        info = arms.get(name, {})
        note = f" — {info['note']}" if info.get("note") else ""
        lines.append(f"- `{name}` ({info.get('family', '?')}): {info.get('about', '')}{note}")
    return lines + [
        "",
        "pretune's arms run `train_run` into a scratch run folder, as `pretune train --checkpoint-every 0` does (no "
        "checkpoints during training: the baselines write none), with each method's default learning rates. The "
        "baselines follow PEFT's sequence-classification examples: AdamW, linear schedule with 6% warm-up, decoder "
        "models padded on the left; they are evaluated on dev at the same steps as pretune's trainer.",
        "",
    ]


def _column_notes() -> list[str]:
    return [
        "## Columns",
        "",
        "- *saved weights*: the weight files the arm must keep to predict (pretune: `adapter.safetensors`; "
        "PEFT: the adapter and the new head as `save_pretrained` writes them; full fine-tuning: the whole model).",
        "- *train s*: preparing the training data (tokenizing; for a frozen body also the one encoding pass) and the "
        "training loop with its dev evaluations; *train ex/s*: training examples processed per second of that.",
        "- *eval ex/s*: test examples per second, preparation included; *peak RSS*: the run's own process "
        "(each run has one), model loading, training, evaluation and saving included.",
        "- *load avg*: the machine's 1-minute load average around the runs. On a shared machine timings taken under "
        "a load above its core count are inflated; accuracy is not affected.",
        "",
    ]
