"""LAMA facts: the reader of a relation folder and the single-token filter.

A data folder holds one sub-folder per relation (`P19/train.jsonl`, `dev.jsonl`, `test.jsonl`;
each line `{"sub_label": ..., "obj_label": ..., "predicate_id": ...}`). Every problem is one
line naming the file and line.

LAMA's convention: a fact counts only if its object is one token of the model's vocabulary,
read as it appears in the prompt (after a space, " Paris", for a BPE or SentencePiece vocabulary).
`single_token_facts` keeps those and counts the rest; an object that the user gives for a
single-token task and that is not one token is refused by `object_token`, never split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..readers import jsonl_rows

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Fact:
    subject: str
    object: str
    relation: str
    source: str = ""  # "file:line", for error messages


def relation_folders(root: str | Path, wanted: list[str] | None = None) -> dict[str, Path]:
    """The relation folders under a data folder (all of them, or the `wanted` ones), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder")
    found = {p.name: p for p in sorted(root.iterdir()) if (p / "train.jsonl").is_file() or (p / "test.jsonl").is_file()}
    if not found:
        raise UserError(f"--data {root}: no relation folders (expected {root}/P19/train.jsonl and the like)")
    if wanted is None:
        return found
    missing = [r for r in wanted if r not in found]
    if missing:
        raise UserError(f"--relations: {', '.join(missing)} not in {root} (it has {', '.join(found)})")
    return {r: found[r] for r in wanted}


def read_facts(path: Path) -> list[Fact]:
    """The facts of one split file; an absent file is an empty split (most relations' tests)."""
    if not path.is_file():
        return []
    return [_fact(row, where) for where, row in jsonl_rows(path)]


def _fact(row: dict, where: str) -> Fact:
    values = {}
    for key in ("sub_label", "obj_label"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: '{key}' is missing or empty")
        values[key] = value.strip()
    return Fact(values["sub_label"], values["obj_label"], str(row.get("predicate_id", "")), where)


def read_relation(folder: Path) -> dict[str, list[Fact]]:
    return {split: read_facts(folder / f"{split}.jsonl") for split in SPLITS}


def object_token(obj: str, encode, lead: str, unk_id: int | None) -> int | None:
    """The vocabulary id of an object as it reads in place of the mask, or None if it is not one token."""
    ids = encode(lead + obj)
    if len(ids) != 1 or ids[0] == unk_id:
        return None
    return ids[0]


def require_single_token(fact: Fact, encode, lead: str, unk_id: int | None) -> int:
    """The object's token id; a UserError naming the object and its tokens if it is not one token."""
    token = object_token(fact.object, encode, lead, unk_id)
    if token is None:
        pieces = encode(lead + fact.object)
        where = f"{fact.source}: " if fact.source else ""
        raise UserError(
            f"{where}object '{fact.object}' is {len(pieces)} tokens for this model, not one: "
            "a single-token probe never splits it (--multi-token drop leaves such facts out, as LAMA does)"
        )
    return token


def single_token_facts(facts: list[Fact], encode, lead: str, unk_id: int | None) -> tuple[list[tuple[Fact, int]], int]:
    """The facts whose object is one token (with that token), and how many were dropped."""
    kept = []
    for fact in facts:
        token = object_token(fact.object, encode, lead, unk_id)
        if token is not None:
            kept.append((fact, token))
    return kept, len(facts) - len(kept)
