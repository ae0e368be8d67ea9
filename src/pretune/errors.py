"""The one error type a user sees, and how the command line answers any error.

Anything the user can fix (a malformed data line, an unknown label, a pattern without a mask,
a missing model) raises `UserError` with one line that names what and where. The command line
prints that line and exits with code 2, without a traceback; library users catch it like any
other exception. An OSError on a path the user gave (read-only, missing, a disk full) is answered
the same way. Anything else is pretune's own fault: one line naming the log that holds the
traceback (the run folder's train.log, else a file in the temporary folder), and exit code 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or configuration, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would hide its cause under the rest.
        super().__init__(" ".join(str(message).split()))


def answer(command, name: str, run_folder: Path | None = None) -> int:
    """Run `command()` (a CLI command) and map what it raises to a line on stderr and an exit code."""
    try:
        return command()
    except UserError as error:
        return _refuse(str(error))
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        return _refuse(f"{where}{error.strerror or error}")
    except KeyboardInterrupt:
        print("pretune: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (pretune's own fault: the traceback goes to a log)
        saved = _save_traceback(name, run_folder)
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        where = f"the traceback is in {saved}" if saved else "the traceback could not be saved"
        print(f"pretune: internal error ({reason}); {where}; please report it", file=sys.stderr)
        return 1


def _refuse(message: str) -> int:
    print(f"pretune: error: {' '.join(message.split())}", file=sys.stderr)
    return UserError.exit_code


def _save_traceback(name: str, run_folder: Path | None) -> Path | None:
    """Append the current exception's traceback to the run folder's log, else to a new file in
    the temporary folder; the path written, or None when nothing could be written."""
    text = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pretune {name} failed\n{traceback.format_exc()}"
    is_run = run_folder is not None and (run_folder / "run.json").is_file()  # never a user's own folder
    candidates = [run_folder / "train.log"] if is_run else []
    candidates.append(Path(tempfile.gettempdir()) / f"pretune-{name}-{os.getpid()}-{int(time.time())}.log")
    for path in candidates:
        try:
            with open(path, "a", encoding="utf-8") as stream:
                stream.write(text)
            return path
        except OSError:
            continue
    return None
