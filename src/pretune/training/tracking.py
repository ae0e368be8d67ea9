"""Training progress as it happens: history.jsonl in the run folder, and the `--report-to` trackers.

    DIR/history.jsonl   one line per optimizer step ({"kind": "step", "phase", "step", "loss", "lr"})
                        and per dev evaluation ({"kind": "evaluation", ...} the row metrics.json's
                        history holds), appended and flushed as training goes: a killed run keeps
                        what it did. A resumed run first drops the lines past its checkpoint, so
                        each step appears once.
    DIR/tracking/       what the tracker writes there (TensorBoard's event files), through
                        accelerate's trackers (`Accelerator(log_with=...)`, `init_trackers`, `log`)

`phase` is the stage of the run's recipe (an ensemble member, distillation); trackers see a stage
after the first under its own tags (`stage1/train/loss`), since each stage counts its steps from 1.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..errors import UserError

HISTORY, TRACKING = "history.jsonl", "tracking"
# --report-to's choices: accelerate's trackers, each usable once its package is installed.
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "aim": "aim",
    "clearml": "clearml", "dvclive": "dvclive", "trackio": "trackio", "swanlab": "swanlab",
}
TRACKERS = ("none", *TRACKER_PACKAGES)


def check_tracker(name: str) -> None:
    """A known tracker whose package is installed (checked before a run folder exists)."""
    if name not in TRACKERS:
        raise UserError(f"--report-to {name!r}: unknown tracker; choose one of {', '.join(TRACKERS)}")
    package = TRACKER_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        extra = "pip install 'pretune[track]'" if name == "tensorboard" else f"pip install {package}"
        raise UserError(f"--report-to {name}: the {package} package is not installed ({extra})")


class History:
    """history.jsonl, appended a line at a time."""

    def __init__(self, path: Path, resume: tuple[int, int] | None):
        """`resume`: (phase, step) of the checkpoint the run continues from; lines past it go.
        None: a run starting from its beginning (an empty history)."""
        self.path = path
        from ..storage import atomic_write_text  # here: the CLI reads TRACKERS without loading torch

        kept = [] if resume is None else [line for line in _lines(path) if not _after(json.loads(line), resume)]
        atomic_write_text(path, "".join(kept))  # a kill here leaves the old history or the new, whole

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
            file.flush()


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    # A kill in the middle of a write leaves a partial last line: it goes.
    return [line + "\n" for line in text.splitlines() if _complete(line)]


def _complete(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _after(row: dict, resume: tuple[int, int]) -> bool:
    phase, step = resume
    return row.get("phase", 0) > phase or (row.get("phase", 0) == phase and row.get("step", 0) > step)


class Reporter:
    """Where the trainer reports each step and evaluation: history.jsonl (on the process that writes
    the run folder) and the trackers (accelerate logs from the main process only)."""

    def __init__(self, accelerator, folder: Path | None, report_to: str, options: dict, resume: tuple[int, int] | None):
        self.accelerator, self.tracking = accelerator, report_to != "none"
        self.history = History(folder / HISTORY, resume) if folder is not None else None
        if self.tracking:
            # Hyperparameters as trackers take them: numbers and strings (None is "no value").
            hyper = {k: v for k, v in options.items() if v is not None}
            accelerator.init_trackers(folder.name if folder else "pretune", config=hyper)

    def step(self, phase: int, step: int, loss: float, rates: dict[str, float]) -> None:
        if self.history is not None:
            self.history.append({"kind": "step", "phase": phase, "step": step, "loss": loss, "lr": rates})
        if self.tracking:
            values = {"train/loss": loss, **{f"train/lr_{name}": rate for name, rate in rates.items()}}
            self.accelerator.log(_tagged(values, phase), step=step)

    def evaluation(self, phase: int, row: dict) -> None:
        if self.history is not None:
            self.history.append({"kind": "evaluation", "phase": phase, **row})
        if self.tracking:
            values = {("eval/mean_loss" if k == "loss" else f"dev/{k.removeprefix('dev_')}"): v
                      for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
            self.accelerator.log(_tagged(values, phase), step=row["step"])

    def close(self) -> None:
        if self.tracking:
            self.accelerator.end_training()
            self.tracking = False


def _tagged(values: dict, phase: int) -> dict:
    return values if phase == 0 else {f"stage{phase}/{k}": v for k, v in values.items()}
