"""The Table-3 benchmark's summary for the README: arms x tasks, mean over the seeds that finished,
with how many did, beside LM-BFF's published RoBERTa-large rows. Reads what `make bench-tasks` has
stored so far (benchmarks/results/tasks-smollm2/results.json), so it can be run on a partial benchmark:

    python benchmarks/tasks_summary.py      # prints the table and writes summary.md beside results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent / "results" / "tasks-smollm2"
TASKS = ["sst-2", "sst-5", "mr", "subj", "trec", "cola", "mrpc", "qnli", "rte", "sts-b"]
ARMS = ["zero-shot", "prompt-tuning", "head-mpnet", "setfit-mpnet"]  # no `best` arm yet (see levers.md)
PLANNED_SEEDS = {task: 5 if task == "sst-2" else 3 for task in TASKS}
# LM-BFF (Gao et al. 2021) Table 3, RoBERTa-large, K=16: SST-2's rows and the other prompt-based rows from
# ../shared/data/README.md; MRPC and QNLI from github.com/OliverXUZY/LM-BFF metaLM.md, which quotes the table.
PUBLISHED = {
    "LM-BFF fine-tuning": {"sst-2": "81.4 (3.8)"},
    "LM-BFF prompt-based fine-tuning": {"sst-2": "92.7 (0.9)", "sst-5": "47.4 (2.5)", "mr": "87.0 (1.2)",
                                        "subj": "91.2 (1.1)", "trec": "84.8 (5.1)", "rte": "69.1 (3.6)",
                                        "mrpc": "74.5 (5.3)", "qnli": "64.5 (4.2)"},
}


def current_runs(folder: Path) -> list[dict]:
    """The runs stored so far, the latest one per (task, arm, seed) (this benchmark has one configuration)."""
    latest = {}
    for run in json.loads((folder / "results.json").read_text())["runs"]:
        key = run["key"]
        latest[(key["task"], key["arm"], key["seed"])] = run
    return list(latest.values())


def table(runs: list[dict]) -> str:
    cells: dict[tuple[str, str], list[float]] = {}
    metrics = {}
    for run in runs:
        key = run["key"]
        cells.setdefault((key["arm"], key["task"]), []).append(100 * run["test"][run["metric"]])
        metrics[key["task"]] = run["metric"]
    metrics.setdefault("sts-b", "pearson")
    header = "| arm | " + " | ".join(f"{t} ({metrics.get(t, '?')})" for t in TASKS) + " |"
    lines = [header, "|---|" + "---|" * len(TASKS)]
    for arm in ARMS:
        row = []
        for task in TASKS:
            values = cells.get((arm, task))
            if not values:
                row.append("–")
                continue
            planned = 1 if arm == "zero-shot" else PLANNED_SEEDS[task]
            done = f" [{len(values)}/{planned}]" if len(values) < planned else ""
            spread = f" ({np.std(values):.1f})" if len(values) > 1 else ""
            row.append(f"{np.mean(values):.1f}{spread}{done}")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    for label, by_task in PUBLISHED.items():
        lines.append(f"| {label} (published, RoBERTa-large 355M) | " + " | ".join(by_task.get(t, "–") for t in TASKS) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = table(current_runs(FOLDER))
    (FOLDER / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
