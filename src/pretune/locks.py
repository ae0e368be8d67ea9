"""One writer per run folder: an exclusive OS lock on a file inside it.

`train`, `--resume` and `--overwrite` hold the lock (fcntl.flock on DIR/.lock) for as long as they
write; the operating system releases it when the process ends, however it ends (a crash, SIGKILL),
so a stale lock never blocks anyone. A second writer is refused with one line. Readers (`predict`,
`eval`) take the shared lock while they read, so they never read a run in the middle of a write.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UserError

LOCK = ".lock"


class FolderLock:
    """A held lock on a run folder; `release` (or the end of the process) lets it go."""

    def __init__(self, handle: int, path: Path):
        self._handle, self.path = handle, path

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor releases the flock
            self._handle = None

    def __del__(self):
        self.release()


def lock_for_writing(folder: Path) -> FolderLock:
    """The exclusive lock of `folder` (an existing folder), or one line saying who holds it."""
    path = Path(folder) / LOCK
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        raise UserError(f"{folder}: cannot lock the run folder ({error.strerror})") from None
    _lock_or_refuse(handle, fcntl.LOCK_EX, f"run folder {folder} is in use by another pretune process")
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the refusal's message
    return FolderLock(handle, path)


def lock_for_reading(folder: Path) -> FolderLock | None:
    """The shared lock of `folder` while a run is read; None for a folder without a lock file
    (written by an older pretune, or read-only to this user: there is no writer to wait for)."""
    path = Path(folder) / LOCK
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    _lock_or_refuse(handle, fcntl.LOCK_SH, f"run {folder} is being written by another pretune process")
    return FolderLock(handle, path)


def _lock_or_refuse(handle: int, kind: int, refusal: str) -> None:
    """Take the lock without waiting; held by another process: close and refuse in one line."""
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(handle)
        os.close(handle)
        raise UserError(f"{refusal}{holder}; wait for it to end") from None


def _read_holder(handle: int) -> str:
    try:
        pid = os.pread(handle, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
