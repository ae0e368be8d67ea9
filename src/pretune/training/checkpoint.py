"""Checkpoints: everything a training run needs to continue exactly where it stopped.

    DIR/checkpoint/state.safetensors      the trainable weights now, and the best state so far (`best.`)
    DIR/checkpoint/trainer.pt             optimizer, schedule, RNG states (python, numpy, torch, the
                                          batch order), step, best metric and step, history, counters
    DIR/checkpoint/phase-<i>.safetensors  the final weights of each finished training phase: the stage
                                          <i> of the run's recipe (a pattern ensemble trains one model
                                          per pattern, then may distil them)

A checkpoint is written into a fresh folder that then replaces the old one by renames, so a kill at
any moment leaves the previous checkpoint or the new one whole, never a mix. The trainer decides
what goes in (`Snapshot`); this module only writes and reads it.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..runs import CHECKPOINT, atomic_write_bytes, load_weights, save_weights

STATE, TRAINER = "state.safetensors", "trainer.pt"
# Without --checkpoint-every, a checkpoint at the first evaluation this long after the last one:
# a full fine-tuning checkpoint holds the body, its best copy and the optimizer (several times the
# model's size), too much to write at every evaluation of a short run.
DEFAULT_INTERVAL_SECONDS = 600
CURRENT, BEST = "current.", "best."
FORMAT = 1


@dataclass
class Snapshot:
    """The trainer in the middle of a phase: enough to continue it bit for bit."""

    phase: int
    loop: dict  # the loop's counters and history (JSON values)
    weights: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: dict  # see rng_state(), plus the batch order


class Checkpointer:
    """Writes a run's checkpoints (on the process that writes the run folder) and reads them back."""

    def __init__(self, run_folder: str | os.PathLike, every: int | None = None, write: bool = True):
        self.run_folder = Path(run_folder)
        self.folder = self.run_folder / CHECKPOINT
        self.every = every  # steps between checkpoints; None: every 10 minutes, at an evaluation; 0: only at phase ends
        self._last_saved = time.monotonic()
        self.write = write
        self.finished: list[dict] = []  # the results of the finished phases, in order
        self.pending: Snapshot | None = None  # the phase in progress when the checkpoint was written
        self.config: dict | None = None  # the training options the checkpoint was written with
        self.step: int | None = None  # the step of the newest checkpoint, written or read
        self.source = self.folder  # where the checkpoint was read from

    # -- reading ------------------------------------------------------------------------------
    def load(self) -> bool:
        """Read the newest checkpoint, if any; True when there was one."""
        folder = _recover(self.folder, repair=self.write)
        if folder is None:
            return False
        self.source = folder
        try:
            saved = torch.load(io.BytesIO((folder / TRAINER).read_bytes()), weights_only=True)
        except (OSError, RuntimeError, EOFError) as error:
            raise UserError(f"{folder / TRAINER}: unreadable checkpoint ({error})") from None
        if saved.get("format") != FORMAT:
            raise UserError(f"{folder / TRAINER}: checkpoint format {saved.get('format')} is not {FORMAT}")
        self.finished = json.loads(saved["finished"])
        self.config = json.loads(saved["config"])
        self.step = saved["step"]
        if saved["loop"] is not None:
            state = load_weights(folder / STATE)
            best = _with_prefix(state, BEST)
            self.pending = Snapshot(
                phase=saved["phase"], loop=json.loads(saved["loop"]), weights=_with_prefix(state, CURRENT),
                best=best or None, optimizer=saved["optimizer"], scheduler=saved["scheduler"], rng=saved["rng"],
            )
        return True

    def finished_phase(self, phase: int) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(final weights, result) of a phase that finished before the run stopped."""
        if phase >= len(self.finished):
            return None
        return load_weights(self.source / _phase_file(phase)), self.finished[phase]

    def resume(self, phase: int) -> Snapshot | None:
        """The saved state of `phase`, if the run stopped in its middle (handed out once)."""
        if self.pending is None or self.pending.phase != phase:
            return None
        snapshot, self.pending = self.pending, None
        return snapshot

    # -- writing ------------------------------------------------------------------------------
    def due(self, step: int, eval_every: int) -> bool:
        if self.every is None:
            elapsed = time.monotonic() - self._last_saved
            return step % eval_every == 0 and elapsed >= DEFAULT_INTERVAL_SECONDS
        return self.every > 0 and step % self.every == 0

    def save(self, snapshot: Snapshot, config: dict) -> None:
        """A checkpoint in the middle of a phase."""
        weights = {CURRENT + k: v for k, v in snapshot.weights.items()}
        weights.update({BEST + k: v for k, v in (snapshot.best or {}).items()})
        trainer = {
            "format": FORMAT, "phase": snapshot.phase, "step": snapshot.loop["step"],
            "finished": json.dumps(self.finished), "config": json.dumps(config),
            "loop": json.dumps(snapshot.loop, default=float),
            "optimizer": snapshot.optimizer, "scheduler": snapshot.scheduler, "rng": snapshot.rng,
        }
        self._commit(trainer, weights, None)

    def finish_phase(self, phase: int, weights: dict[str, torch.Tensor], result: dict, config: dict) -> None:
        """A checkpoint at the end of a phase: its final weights and result; nothing in progress."""
        self.finished = self.finished[:phase] + [json.loads(json.dumps(result, default=float))]
        trainer = {
            "format": FORMAT, "phase": phase + 1, "step": result["steps"], "finished": json.dumps(self.finished),
            "config": json.dumps(config), "loop": None, "optimizer": None, "scheduler": None, "rng": None,
        }
        self._commit(trainer, None, (phase, weights))

    def remove(self) -> None:
        if self.write:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _commit(self, trainer: dict, weights: dict | None, phase_weights: tuple[int, dict] | None) -> None:
        self.step = trainer["step"]
        if not self.write:
            return
        partial = self.folder.with_name(f".{CHECKPOINT}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # the remains of a write a kill interrupted
        partial.mkdir()
        if weights is not None:
            save_weights(partial / STATE, weights)
        if phase_weights is not None:
            save_weights(partial / _phase_file(phase_weights[0]), phase_weights[1])
        for index in range(len(self.finished)):
            name = _phase_file(index)
            if not (partial / name).exists():
                _link_or_copy(self.folder / name, partial / name)
        buffer = io.BytesIO()
        torch.save(trainer, buffer)
        atomic_write_bytes(partial / TRAINER, buffer.getvalue())
        _replace_folder(partial, self.folder)
        self._last_saved = time.monotonic()


def checkpoint_step(run_folder: str | os.PathLike) -> int | None:
    """The step of a run folder's newest checkpoint; None when it has none (or while it is being
    replaced). Safe to call while the run writes."""
    try:
        saved = torch.load(io.BytesIO((Path(run_folder) / CHECKPOINT / TRAINER).read_bytes()), weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return saved["step"]


# ---------------------------------------------------------------- random number generators


def rng_state() -> dict:
    """The global generators' states: python, numpy, torch (CPU, and every CUDA device)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- files


def _phase_file(phase: int) -> str:
    return f"phase-{phase}.safetensors"


def _with_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # a finished phase's weights never change: share the file
    except OSError:
        shutil.copy2(source, target)


def _replace_folder(new: Path, current: Path) -> None:
    """`new` takes `current`'s place; a kill between the two renames leaves `.checkpoint.old`,
    which `_recover` puts back."""
    old = current.with_name(f".{current.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(new, current)
    _fsync_folder(current.parent)
    shutil.rmtree(old, ignore_errors=True)


def _recover(folder: Path, repair: bool) -> Path | None:
    """The newest whole checkpoint folder. A kill between `_replace_folder`'s renames leaves only
    `.checkpoint.old`: the writer (`repair`) puts it back; a reader reads it where it is."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.exists():
        if not repair:
            return old if (old / TRAINER).is_file() else None
        os.replace(old, folder)
    if repair:
        shutil.rmtree(folder.with_name(f".{folder.name}.partial"), ignore_errors=True)
    return folder if (folder / TRAINER).is_file() else None


def _fsync_folder(folder: Path) -> None:
    """Make the renames themselves durable (a power cut, not only a kill)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
