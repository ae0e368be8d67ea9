"""Anything a user holds -> a task's examples.

A task comes from a folder, a data file or a benchmark name (`data.load_task`), or from data already
in memory:

- a pandas DataFrame, a `datasets.Dataset` or a list of dicts: one split, the training data. As for a
  single data file, there is no dev split then (no early stopping, the last state is kept; `--shots`
  draws its dev examples from the training data);
- a `datasets.DatasetDict`, or any mapping of split names to the above: `train`, `validation` or
  `dev`, and `test`.

The columns (`text_field`, `pair_field`, `label_field`), label checks and one-line errors are those
of a data file, with the row named instead of the line: "DataFrame 'train' row 7: missing column
'text'". A `datasets` ClassLabel column gives its label names, not its integer ids; a split whose
labels are all -1 (GLUE's hidden test labels) has none and is left out.

pandas and datasets are never imported here: their objects are recognised by the module that made
them, so the core runs without either package.

In-memory data has no path to record, so a run folder records what it was (`describe`): its kind,
rows per split and a sha256 of its examples; resuming such a run needs the same data again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping

from .data import Task, finish_task, load_task
from .errors import UserError
from .readers import Columns, Example, examples_from_rows

log = logging.getLogger("pretune")

SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}
HIDDEN_LABEL = -1  # what `datasets` holds in place of a label it does not publish
WHAT_A_TASK_IS = ("a task folder, a data file, a benchmark task name, a pandas DataFrame, a datasets.Dataset "
                  "or DatasetDict, a list of dicts, or a dict of those by split name")


def in_memory(task) -> bool:
    """Whether a run's task is data the user holds rather than a name or a path."""
    return not isinstance(task, (str, os.PathLike))


def load_any_task(spec, split_seed: int | None = None, columns: Columns = Columns()) -> Task:  # noqa: B008
    """A task from a path or name (`data.load_task`), or from data in memory."""
    if not in_memory(spec):
        return load_task(os.fspath(spec), split_seed=split_seed, columns=columns)
    return task_from_data(spec, columns)


def task_from_data(data, columns: Columns = Columns()) -> Task:  # noqa: B008
    """A task from a DataFrame, Dataset, list of dicts, or a mapping of split names to those."""
    kind = kind_of(data)
    if kind is None:
        raise UserError(f"task: expected {WHAT_A_TASK_IS}; got {type(data).__name__}")
    held = _split_mapping(data, kind) if kind in ("DatasetDict", "dict") else {"train": data}
    splits = {"train": [], "dev": [], "test": []}
    for name, part in held.items():
        examples = _labelled(part, name, columns)
        if examples is None:
            log.warning("%s '%s': no labels (all %d): left out", kind_of(part), name, HIDDEN_LABEL)
            continue
        splits[SPLITS[name]] = examples
    if not splits["train"]:
        raise UserError(f"{kind}: no labelled training examples (a 'train' split with labels)")
    return finish_task("in-memory", None, "accuracy", splits["train"], splits["dev"], splits["test"],
                       f"in-memory {kind}")


def examples_from(data, columns: Columns = Columns(), require_label: bool = True, split: str = "data"):  # noqa: B008
    """Examples from one split held in memory (a DataFrame, a Dataset, a list of dicts)."""
    kind = kind_of(data)
    if kind not in ("DataFrame", "Dataset", "list"):
        raise UserError(f"{split}: expected a pandas DataFrame, a datasets.Dataset or a list of dicts; "
                        f"got {type(data).__name__}")
    examples = examples_from_rows(_rows(data, kind, split, columns), columns, require_label)
    if not examples:
        raise UserError(f"{kind} '{split}': no rows")
    return examples


def kind_of(data) -> str | None:
    """DataFrame | Dataset | DatasetDict | dict | list, by the class and the module that made it; None otherwise."""
    module, name = type(data).__module__.split(".")[0], type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return "DataFrame"
    if module == "datasets" and name in ("Dataset", "DatasetDict"):
        return name
    if isinstance(data, Mapping):
        return "dict"
    if isinstance(data, (list, tuple)):
        return "list"
    return None


def _split_mapping(data: Mapping, kind: str) -> dict:
    unknown = [str(name) for name in data if name not in SPLITS]
    if unknown:
        raise UserError(f"{kind}: unknown split '{unknown[0]}' (splits: train, validation or dev, test)")
    if "validation" in data and "dev" in data:
        raise UserError(f"{kind}: both 'validation' and 'dev' splits; give one dev split")
    return dict(data)


def _labelled(part, split: str, columns: Columns) -> list[Example] | None:
    """A split's examples; None when every label is hidden (-1)."""
    kind = kind_of(part)
    if kind == "Dataset" and columns.label in part.column_names:
        values = part[columns.label]
        if values and all(v == HIDDEN_LABEL for v in values) and _label_names(part, columns) is not None:
            return None
    return examples_from(part, columns, require_label=True, split=split)


def _rows(data, kind: str, split: str, columns: Columns):
    """("<kind> '<split>' row N", mapping) for each row; N counts from 0, as indexing does."""
    if kind == "DataFrame":
        for index, record in zip(data.index, data.to_dict("records")):
            yield f"DataFrame '{split}' row {index}", record
    elif kind == "Dataset":
        names = _label_names(data, columns)
        for number, record in enumerate(data):
            if names is not None and isinstance(record.get(columns.label), int):
                record = {**record, columns.label: _class_name(record[columns.label], names)}
            yield f"Dataset '{split}' row {number}", record
    else:
        for number, record in enumerate(data):
            if not isinstance(record, Mapping):
                raise UserError(f"list '{split}' item {number}: expected a dict of columns, got {type(record).__name__}")
            yield f"list '{split}' item {number}", record


def _label_names(dataset, columns: Columns) -> list[str] | None:
    """A datasets ClassLabel column's names (None for any other column)."""
    feature = getattr(dataset, "features", {}).get(columns.label)
    names = getattr(feature, "names", None)
    return list(names) if isinstance(names, list) else None


def _class_name(value: int, names: list[str]):
    return None if value == HIDDEN_LABEL else names[value] if 0 <= value < len(names) else value


# ---------------------------------------------------------------- inputs to predict on


def inputs_to_examples(inputs, columns: Columns = Columns()) -> list[Example]:  # noqa: B008
    """What `Predictor.predict` takes: a text, a (text, pair) tuple, a dict of columns or an Example,
    one or a list of them; or a DataFrame / Dataset. Labels are not needed."""
    if isinstance(inputs, (str, Example)):
        inputs = [inputs]
    kind = kind_of(inputs)
    if kind in ("DataFrame", "Dataset"):
        return examples_from(inputs, columns, require_label=False, split="input")
    if kind != "list":
        inputs = list(inputs) if hasattr(inputs, "__iter__") and not isinstance(inputs, Mapping) else [inputs]
    return [_one_input(item, number, columns) for number, item in enumerate(inputs)]


def _one_input(item, number: int, columns: Columns) -> Example:
    where = f"input {number}"
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        return Example(item, source=where)
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return Example(item[0], item[1], source=where)
    if isinstance(item, Mapping):
        return examples_from_rows([(where, item)], columns, require_label=False)[0]
    raise UserError(f"{where}: expected a text, a (text, pair) tuple of texts, a dict of columns or an Example; "
                    f"got {type(item).__name__}")


# ---------------------------------------------------------------- what a run folder records


def describe(data, task: Task) -> dict:
    """What in-memory data was, for a run folder: its kind, rows per split and a sha256 of its examples."""
    return {"kind": kind_of(data), "rows": {split: len(getattr(task, split)) for split in ("train", "dev", "test")},
            "sha256": fingerprint(task)}


def fingerprint(task: Task) -> str:
    """sha256 of a task's examples (texts and labels, split by split, in order)."""
    digest = hashlib.sha256()
    for split in ("train", "dev", "test"):
        for example in getattr(task, split):
            row = [split, example.text, example.text_pair, example.label]
            digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def resumed_task(saved: dict, data, task, folder) -> object:
    """The task to resume a run with: its recorded name or path, or (a run on in-memory data) the
    same data given again; without it, one line saying how to resume."""
    source = saved.get("data_source")
    if source is None:
        if data is not None:
            raise UserError(f"--resume {folder}: the run reads its task from {task}; resume it without data")
        return task
    if data is None:
        rows = sum(source.get("rows", {}).values()) if isinstance(source.get("rows"), dict) else "?"
        raise UserError(f"--resume {folder}: the run was trained on an in-memory {source.get('kind')} ({rows} rows, "
                        f"sha256 {str(source.get('sha256'))[:12]}...), which a run folder does not keep; resume it "
                        "from Python with resume_run(folder, data=<the same data>)")
    return data


def check_resumed_data(saved: dict, task: Task, folder) -> None:
    """The data given to resume a run must be the data it was trained on (same examples, same order)."""
    source = saved.get("data_source")
    if source is not None and fingerprint(task) != source.get("sha256"):
        raise UserError(f"--resume {folder}: the data given differs from the data the run was trained on "
                        f"(sha256 {fingerprint(task)[:12]}... vs {str(source.get('sha256'))[:12]}...)")
