"""A run folder: what one training run leaves behind, written so that a crash never looks complete.

    DIR/run.json              status (running | complete | failed), times, pretune version
    DIR/config.yaml           the resolved configuration: enough to rebuild the method
    DIR/adapter.safetensors   the trainable weights only (for a frozen body: just the head or prompt)
    DIR/metrics.json          dev and test metrics, parameter counts, sizes, timings
    DIR/predictions.jsonl     one line per evaluated example, with label probabilities
    DIR/train.log             the training log

Every file is written atomically (a temporary file, then a rename), and `run.json` says
`complete` only after everything else is in place.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from . import __version__
from .errors import UserError

WEIGHTS = "adapter.safetensors"
STATUS = "run.json"
CHECKPOINT = "checkpoint"  # the folder of the newest checkpoint (see `checkpoint`)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    # Not mkstemp: its file is readable by the owner only. Mode 0o666 lets the umask decide, so a
    # result file gets the mode any file the user creates gets.
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_weights(path: Path, state: dict) -> int:
    """Trainable weights as safetensors (atomically); returns the file's size in bytes."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": "pt", "pretune": __version__}))
    return Path(path).stat().st_size


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


class RunFolder:
    """Create, fill and finish one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def create(cls, path, overwrite: bool = False) -> RunFolder:
        """A new, empty run folder. An existing non-empty folder is refused unless `overwrite`."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path}: exists and is not a folder")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise UserError(f"run folder {path} already exists; choose another --out or pass --overwrite")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return run

    def set_status(self, status: str, **fields) -> None:
        current = self.status_info() if (self.path / STATUS).is_file() else {}
        current.update(fields, status=status, pretune=__version__)
        atomic_write_text(self.path / STATUS, json.dumps(current, indent=2) + "\n")

    def status_info(self) -> dict:
        try:
            return json.loads((self.path / STATUS).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    # -- contents -------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_text(self.path / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    def write_predictions(self, rows: list[dict], name: str = "predictions.jsonl") -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(self.path / name, text)

    def save_weights(self, state: dict) -> int:
        return save_weights(self.path / WEIGHTS, state)

    def load_weights(self) -> dict:
        return load_weights(self.path / WEIGHTS)

    def log_file(self) -> Path:
        return self.path / "train.log"

    # -- completion -----------------------------------------------------------------------
    def complete(self) -> None:
        self.set_status("complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))

    @property
    def is_complete(self) -> bool:
        return self.status_info().get("status") == "complete"


def _existing_run(path, option: str) -> RunFolder:
    """A folder that is a pretune run (whatever its status); errors name the option that gave it."""
    run = RunFolder(path)
    if not run.path.is_dir():
        raise UserError(f"{option}{run.path}: run folder not found")
    if not (run.path / STATUS).is_file():
        raise UserError(f"{option}{run.path}: not a pretune run folder (no {STATUS})")
    return run


def open_completed(path) -> RunFolder:
    """A finished run folder to predict with; anything else is one clear error."""
    run = _existing_run(path, "")
    status = run.status_info().get("status")
    if status != "complete":
        raise UserError(f"run {run.path} is not complete (status: {status}); it cannot be used to predict")
    return run


def open_resumable(path) -> RunFolder:
    """An interrupted run folder to continue: a pretune run with its config.yaml, not complete."""
    run = _existing_run(path, "--resume ")
    if run.is_complete:
        raise UserError(f"--resume {run.path}: the run is already complete; nothing to resume")
    if not (run.path / "config.yaml").is_file():
        raise UserError(f"--resume {run.path}: no config.yaml (the run stopped before it began); start it again with --overwrite")
    return run


@contextmanager
def guarded(run: RunFolder, created_here: bool = True):
    """On failure, a run folder never stays looking complete: bad input removes the fresh folder,
    any other error marks it failed (its log and checkpoints stay for inspection)."""
    try:
        yield run
    except UserError as error:
        if created_here and not _has_checkpoint(run):
            shutil.rmtree(run.path, ignore_errors=True)
        else:
            run.set_status("failed", error=str(error))
        raise
    except BaseException as error:
        if run.path.is_dir():
            run.set_status("failed", error=f"{type(error).__name__}: {error}")
        raise


def _has_checkpoint(run: RunFolder) -> bool:
    return (run.path / CHECKPOINT).exists()
