"""Files that are whole or absent: atomic writes, weight files with the same bytes for the same
weights, checksums, and the cleaning of what a kill left behind.

Every file is written to a temporary file beside its target (`.NAME.<12 hex>`) and renamed into
place, so a reader sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from pathlib import Path

from . import __version__
from .errors import UserError

# The temporary files `atomic_write_bytes` makes; a kill may leave one.
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}")


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """The file is there and holds what was written (a truncated, garbled or swapped file is refused)."""
    try:
        actual = sha256_file(path)
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror})") from None
    if actual != expected:
        raise UserError(f"{path}: damaged or replaced (its sha256 is not the one recorded when it was written)")


# ---------------------------------------------------------------- weights


def weights_bytes(state: dict) -> bytes:
    """Safetensors bytes with a canonical header: safetensors writes its metadata from a hash map,
    whose order changes from process to process; identical weights must give identical files."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    data = save(tensors, metadata={"format": "pt", "pretune": __version__})
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def save_weights(path: Path, state: dict) -> int:
    """Trainable weights as safetensors (atomically); returns the file's size in bytes."""
    atomic_write_bytes(path, weights_bytes(state))
    return Path(path).stat().st_size


def load_weights(path: Path) -> dict:
    """The tensors of a safetensors file; a missing or unreadable one is one line naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file missing")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{path}: unreadable weights file ({type(error).__name__}: {error})") from None


# ---------------------------------------------------------------- leftovers


def remove_leftovers(folder: Path, names: tuple[str, ...] = ()) -> list[str]:
    """Delete the temporary files a kill left in `folder` and the named leftovers (folders or
    files); returns what was deleted. Never follows a link."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name in names or (TEMPORARY.fullmatch(entry.name) and not entry.is_dir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed
