"""A run folder: what one training run leaves behind, written so that a crash never looks complete.

    DIR/run.json              status (running | complete | failed), times, pretune version
    DIR/config.yaml           the resolved configuration: enough to rebuild the method
    DIR/adapter.safetensors   the trainable weights only (for a frozen body: just the head or prompt)
    DIR/metrics.json          dev and test metrics, parameter counts, sizes, timings
    DIR/predictions.jsonl     one line per evaluated example, with label probabilities
    DIR/train.log             the training log
    DIR/history.jsonl         each training step and dev evaluation, appended as they happen (`training.tracking`)
    DIR/tracking/             what a `--report-to` tracker writes (TensorBoard's event files)

Every file is written atomically (a temporary file, then a rename), and `run.json` says
`complete` only after everything else is in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from . import __version__
from .errors import UserError
from .locks import LOCK, FolderLock, lock_for_reading, lock_for_writing
from .storage import (
    atomic_write_bytes,
    atomic_write_text,
    check_sha256,
    load_weights,
    remove_leftovers,
    save_weights,
    sha256_file,
)

__all__ = ["RunFolder", "atomic_write_bytes", "atomic_write_text", "load_weights", "save_weights", "open_completed"]

log = logging.getLogger("pretune")

WEIGHTS = "adapter.safetensors"
STATUS = "run.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint"  # the folder of the newest checkpoint (see `checkpoint`)
# What a kill can leave beside the files of a finished run (besides temporary files).
CHECKPOINT_LEFTOVERS = (CHECKPOINT, f".{CHECKPOINT}.old", f".{CHECKPOINT}.partial")
CHECKSUMMED = (WEIGHTS, CONFIG)  # their sha256 goes into run.json when the run completes


class RunFolder:
    """Create, fill and finish one run folder."""

    def __init__(self, path: str | os.PathLike, lock: FolderLock | None = None):
        self.path = Path(path)
        self.lock = lock  # held while this process writes the folder
        self.made = False  # this process made the folder (so a bad input removes it, not just its contents)

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def create(cls, path, overwrite: bool = False) -> RunFolder:
        """A new run folder, locked for this process. An existing folder with anything in it is
        refused, unless `overwrite` and it is a pretune run (never a user's own folder)."""
        path = Path(path)
        if path.is_symlink() and overwrite:
            raise UserError(f"--out {path}: is a symbolic link; --overwrite replaces only a run folder itself")
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path}: exists and is not a folder")
        made = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--out {path}: cannot create the run folder ({error.strerror})") from None
        had_lock = (path / LOCK).exists()
        run = cls(path, lock_for_writing(path))  # before looking inside: another writer is refused here
        run.made = made
        try:
            run._empty(overwrite)
            run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        except BaseException:
            if not had_lock:  # a refused folder (the user's own) keeps no trace of pretune
                (path / LOCK).unlink(missing_ok=True)
            run.release()
            raise
        return run

    def _empty(self, overwrite: bool) -> None:
        contents = [entry for entry in self.path.iterdir() if entry.name != LOCK]
        if not contents:
            return
        if not overwrite:
            raise UserError(f"run folder {self.path} already exists; choose another --out or pass --overwrite")
        if not (self.path / STATUS).is_file() or (self.path / STATUS).is_symlink():
            raise UserError(
                f"--overwrite {self.path}: not a pretune run folder (no {STATUS}); it holds other files, "
                "which pretune never deletes"
            )
        info = self.status_info()
        log.warning("--overwrite: replacing the run in %s (status %s, started %s)",
                    self.path, info.get("status", "unknown"), info.get("started", "unknown"))
        self.empty_out()

    def empty_out(self) -> None:
        """Delete what the folder holds (not the folder, not its lock); a link is removed, never followed."""
        for entry in self.path.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def set_status(self, status: str, **fields) -> None:
        current = self.status_info() if (self.path / STATUS).is_file() else {}
        if status != "failed":
            current.pop("error", None)  # an earlier attempt's error is not this run's
        current.update(fields, status=status, pretune=__version__)
        atomic_write_text(self.path / STATUS, json.dumps(current, indent=2) + "\n")

    def status_info(self) -> dict:
        try:
            info = json.loads((self.path / STATUS).read_text())
        except (OSError, ValueError, RecursionError):
            return {}
        return info if isinstance(info, dict) else {}

    # -- contents -------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        """config.yaml as a mapping; a damaged one (invalid YAML, a Python tag, not a mapping) is one line."""
        path = self.path / CONFIG
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise UserError(f"{path}: cannot be read ({error.strerror})") from None
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as error:
            reason = " ".join(str(error).split())[:120]
            raise UserError(f"{path}: not a valid run configuration ({type(error).__name__}: {reason})") from None
        if not isinstance(config, dict):
            raise UserError(f"{path}: expected a mapping of options, got {type(config).__name__}")
        return config

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
        """`complete`, with the sha256 of the weights and the configuration that `open_completed` checks."""
        checksums = {name: sha256_file(self.path / name) for name in CHECKSUMMED}
        self.set_status("complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), sha256=checksums)

    def remove_leftovers(self, finished: bool) -> list[str]:
        """Temporary files a kill left; once `finished`, the checkpoint folders too."""
        return remove_leftovers(self.path, CHECKPOINT_LEFTOVERS if finished else ())

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


@contextmanager
def open_completed(path):
    """A finished run folder to predict with, read under the shared lock (no writer at work) and
    checked against the checksums it recorded; anything else is one clear error."""
    run = _existing_run(path, "")
    lock = lock_for_reading(run.path)
    try:
        info = run.status_info()
        status = info.get("status")
        if status != "complete":
            raise UserError(f"run {run.path} is not complete (status: {status}); it cannot be used to predict")
        checksums = info.get("sha256")  # absent in runs of older versions
        if checksums is not None:
            if not isinstance(checksums, dict):
                raise UserError(f"{run.path / STATUS}: 'sha256' is damaged")
            for name in CHECKSUMMED:
                if name not in checksums:
                    raise UserError(f"{run.path / STATUS}: no checksum of {name}")
                check_sha256(run.path / name, checksums[name])
        yield run
    finally:
        if lock is not None:
            lock.release()


def open_resumable(path, lock: bool = True) -> RunFolder:
    """An interrupted run folder to continue: a pretune run with its config.yaml, not complete,
    locked for this process (with `lock`: the process that writes)."""
    run = _existing_run(path, "--resume ")
    if lock:
        run.lock = lock_for_writing(run.path)
    try:
        if run.is_complete:
            raise UserError(f"--resume {run.path}: the run is already complete; nothing to resume")
        if not (run.path / CONFIG).is_file():
            raise UserError(
                f"--resume {run.path}: no config.yaml (the run stopped before it began); start it again with --overwrite"
            )
    except BaseException:
        run.release()
        raise
    return run


@contextmanager
def guarded(run: RunFolder, created_here: bool = True):
    """On failure, a run folder never stays looking complete: bad input removes the fresh folder,
    any other error marks it failed (its log and checkpoints stay for inspection). The folder's
    lock is released at the end, whatever happens."""
    try:
        yield run
    except UserError as error:
        if created_here and not _has_checkpoint(run):
            if run.made:
                shutil.rmtree(run.path, ignore_errors=True)
            else:  # the user's own (empty) folder stays
                run.empty_out()
                (run.path / LOCK).unlink(missing_ok=True)
        else:
            run.set_status("failed", error=str(error))
        raise
    except BaseException as error:
        if run.path.is_dir():
            run.set_status("failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        run.release()


def _has_checkpoint(run: RunFolder) -> bool:
    return (run.path / CHECKPOINT).exists()
