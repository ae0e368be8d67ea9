"""Reading a user's data file (JSONL, CSV, TSV, Parquet) into examples.

Every problem in the file is one line naming the file, the line and what is wrong: malformed JSON,
a quote never closed, a missing column, a label that is empty, padded with spaces or a number among
names. A file that is there but cannot be read (a folder, a FIFO, a link loop, no permission) is an
error too, never an empty split.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Example:
    """One input: a text, an optional second text (pair tasks) and a label (name, float, or None)."""

    text: str
    text_pair: str | None = None
    label: str | float | None = None
    source: str = field(default="", compare=False)  # "file:line", for error messages

    def field(self, name: str) -> str | None:
        """The value of a text field by its pattern name (`text` or `text_pair`)."""
        if name == "text":
            return self.text
        if name == "text_pair":
            return self.text_pair
        raise KeyError(name)


@dataclass(frozen=True)
class Columns:
    """Which columns of a user's file hold the text, the second text and the label."""

    text: str = "text"
    pair: str | None = "text_pair"
    label: str = "label"



# The data files a task folder's splits may be, in the order they are looked for.
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")


def read_examples(path: str | os.PathLike, columns: Columns = Columns(), require_label: bool = True) -> list[Example]:
    """Read a .jsonl, .csv, .tsv or .parquet file into examples; one clear line on the first bad row."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    elif suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(path, read_text(path))
    elif suffix in (".csv", ".tsv"):
        rows = _delimited_rows(path, read_text(path), "\t" if suffix == ".tsv" else ",")
    else:
        raise UserError(f"{path}: unsupported data format '{suffix}' (use .jsonl, .csv, .tsv or .parquet)")
    examples = examples_from_rows(rows, columns, require_label)
    if not examples:
        raise UserError(f"{path}: no examples in file")
    return examples


def examples_from_rows(rows, columns: Columns = Columns(), require_label: bool = True) -> list[Example]:  # noqa: B008
    """Examples from ("where", mapping) pairs, whatever held them (a file, a DataFrame, a list of
    dicts): the same columns, label checks and one-line errors for all of them."""
    examples, kinds = [], set()
    for where, row in rows:
        # JSON class ids (0, 1) are names "0", "1"; an id among names would be a class of its own.
        label = row.get(columns.label)
        if isinstance(label, (int, str)) and not isinstance(label, bool):
            kinds.add(type(label))
            if len(kinds) > 1:
                kind, other = ("number", "names") if isinstance(label, int) else ("name", "numbers")
                raise UserError(f"{where}: label {json.dumps(label)} is a {kind} while other labels are {other}")
        examples.append(_example(row, where, columns, require_label))
    return examples


def _parquet_rows(path: Path):
    """("file:row N", row) for each row of a Parquet file (N from 1, as a spreadsheet counts)."""
    _check_regular_file(path)
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install 'pretune[data]'") from None
    try:
        table = parquet.read_table(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        reason = " ".join(str(error).split())[:160]
        raise UserError(f"{path}: not a readable Parquet file ({reason})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {number}", row


def _check_regular_file(path: Path, what: str = "data file") -> None:
    """A file that is there but cannot serve (a folder, a FIFO, a link loop) is an error, never a
    missing split; and a FIFO is never opened (reading one would wait forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(f"{path}: a symbolic link to nothing ({os.readlink(path)})") from None
        raise UserError(f"{what} not found: {path}") from None
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file (a FIFO, socket or device); give a {what}")


def read_text(path: Path, what: str = "data file") -> str:
    _check_regular_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {error.start})") from None


def jsonl_rows(path: Path):
    """("file:line", row) for each JSON object line of a file; a bad line is one UserError naming it."""
    return _jsonl_rows(path, read_text(path))


def _jsonl_rows(path: Path, text: str):
    # Lines end at "\n" only: U+2028 or U+0085 inside a JSON string is legal (str.splitlines would split there).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        row = parse_json(line.removesuffix("\r"), f"{path}:{number}")
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:{number}", row


def parse_json(text: str, where: str):
    """One JSON value; a malformed one, a number too long to convert or nesting too deep to
    follow is one line naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
    except ValueError as error:  # an integer of thousands of digits
        raise UserError(f"{where}: unreadable JSON ({error})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read") from None


# csv refuses fields over 128 KiB by default; a long text is the model's to truncate, not an error.
LONGEST_FIELD = 2**31 - 1


def _delimited_rows(path: Path, text: str, delimiter: str):
    csv.field_size_limit(max(csv.field_size_limit(), LONGEST_FIELD))
    # strict: a quote opened and never closed is an error, not the rest of the file in one field
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    rows = _csv_rows(path, reader)
    try:
        header = next(rows)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    for row in rows:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}:{number}: expected {len(header)} columns ({', '.join(header)}), found {len(row)}")
        yield f"{path}:{number}", dict(zip(header, row))


def _csv_rows(path: Path, reader):
    """The reader's rows; its own errors (a NUL byte before Python 3.11) named by file and line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            hint = "; a quote opened and never closed?" if "end of data" in str(error) else ""
            raise UserError(f"{path}:{reader.line_num}: unreadable row ({error}{hint})") from None


def _example(row: dict, where: str, columns: Columns, require_label: bool) -> Example:
    text = row.get(columns.text)
    if text is None:
        raise UserError(f"{where}: {_absent(row, columns.text)}")
    if not isinstance(text, str):
        raise UserError(f"{where}: column '{columns.text}' must be text, got {type(text).__name__}")
    pair = row.get(columns.pair) if columns.pair else None
    if pair is not None and not isinstance(pair, str):
        raise UserError(f"{where}: column '{columns.pair}' must be text, got {type(pair).__name__}")
    label = row.get(columns.label)
    if label is None and require_label:
        raise UserError(f"{where}: {_absent(row, columns.label)}")
    if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int, float))):
        raise UserError(f"{where}: label must be a name or a number, got {json.dumps(label)}")
    if isinstance(label, int):
        label = str(label)  # integer class ids are names ("0", "1"); floats are regression targets
    if isinstance(label, float) and not math.isfinite(label):
        raise UserError(f"{where}: label is not a finite number")
    if isinstance(label, str):
        if not label.strip():
            if require_label:
                raise UserError(f"{where}: label is empty")
            label = None  # a file to predict on may have an empty label column
        elif label != label.strip():
            raise UserError(f"{where}: label {json.dumps(label)} has spaces around it (labels are compared exactly)")
    return Example(text=text, text_pair=pair or None, label=label, source=where)


def _absent(row: dict, column: str) -> str:
    """Why a row has no value for a column: the column is not there, or its cell is empty (null, None)."""
    if column in row:
        return f"column '{column}' is empty"
    return f"missing column '{column}' (columns: {', '.join(map(str, row))})"
