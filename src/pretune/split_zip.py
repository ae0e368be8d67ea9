"""A model folder shipped as a zip split across several PyPI packages (all-mpnet-base-v2: five
packages, one piece `input/all-mpnet-base-v2.zip.00N` in each), assembled once into the cache.

The pieces are found through each distribution's file list (`importlib.metadata`), without
importing anything: their folder names hold hyphens, so they are not importable packages. The
pieces are joined and unzipped into a temporary folder beside the target, and the folder is renamed
into place only once it is complete: a killed assembly leaves a `.assembling-*` folder, never a
target that looks finished.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from .errors import UserError


def find_pieces(distributions: tuple[str, ...], piece_name: str) -> list[Path]:
    """The installed pieces `<piece_name>.001`, `.002`, ... one per distribution, in order. A missing
    distribution or piece is one clear line naming it."""
    pieces = []
    for number, distribution in enumerate(distributions, start=1):
        wanted = f"{piece_name}.{number:03d}"
        try:
            files = importlib.metadata.distribution(distribution).files or []
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"package '{distribution}' (piece {number} of {len(distributions)}) is not installed") from None
        found = [f for f in files if f.name == wanted]
        path = Path(found[0].locate()) if found else None
        if path is None or not path.is_file():
            raise UserError(f"package '{distribution}' is installed but its piece {wanted} is missing; reinstall it")
        pieces.append(path)
    return pieces


def assemble(pieces: list[Path], target: Path, inner_folder: str) -> Path:
    """Join `pieces` into one zip, unzip it, and move its `inner_folder` to `target` (atomically).
    Returns `target`; an existing complete target is returned as it is."""
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".assembling-", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as part:
                    shutil.copyfileobj(part, out, length=16 << 20)
        _unzip(joined, staging / "unzipped", pieces)
        source = staging / "unzipped" / inner_folder
        if not source.is_dir():
            raise UserError(f"the joined pieces {pieces[0].name}..{pieces[-1].name} hold no folder '{inner_folder}'")
        try:
            os.replace(source, target)
        except OSError:  # another process finished first: keep its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unzip(joined: Path, into: Path, pieces: list[Path]) -> None:
    try:
        with zipfile.ZipFile(joined) as archive:
            broken = archive.testzip()
            if broken is not None:
                raise UserError(f"the joined pieces of {pieces[0].name} are corrupt at {broken}; reinstall the packages")
            archive.extractall(into)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as error:  # a truncated or garbled piece: any of these
        raise UserError(f"the joined pieces {pieces[0].name}..{pieces[-1].name} are not a valid zip ({error}); "
                        "reinstall the packages") from None
