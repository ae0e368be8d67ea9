"""Examples, readers (JSONL, CSV, TSV), label sets, task folders and k-shot sampling.

Every problem in a user's file is reported as one line naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson")
# Other names task files use for the same metrics (GLUE's, scikit-learn's).
METRIC_ALIASES = {"matthews_correlation": "mcc", "matthews": "mcc", "acc": "accuracy", "pearsonr": "pearson"}


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


@dataclass
class Task:
    """A labelled task: ordered label names (None for regression), its metric and its splits."""

    name: str
    labels: list[str] | None
    metric: str = "accuracy"
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    source: str = ""

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def has_pairs(self) -> bool:
        return any(e.text_pair is not None for e in self.train + self.dev + self.test)

    def label_index(self, example: Example) -> int:
        return self.labels.index(example.label)

    def targets(self, examples: list[Example]) -> list:
        """Label indices (classification) or floats (regression) for a list of examples."""
        if self.is_regression:
            return [float(e.label) for e in examples]
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[e.label] for e in examples]


# ---------------------------------------------------------------- readers


def read_examples(path: str | os.PathLike, columns: Columns = Columns(), require_label: bool = True) -> list[Example]:
    """Read a .jsonl, .csv or .tsv file into examples; one clear line on the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(path, text)
    elif suffix in (".csv", ".tsv"):
        rows = _delimited_rows(path, text, "\t" if suffix == ".tsv" else ",")
    else:
        raise UserError(f"{path}: unsupported data format '{suffix}' (use .jsonl, .csv or .tsv)")
    examples = [_example(row, where, columns, require_label) for where, row in rows]
    if not examples:
        raise UserError(f"{path}: no examples in file")
    return examples


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {error.start})") from None


def jsonl_rows(path: Path):
    """("file:line", row) for each JSON object line of a file; a bad line is one UserError naming it."""
    return _jsonl_rows(path, _read_text(path))


def _jsonl_rows(path: Path, text: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:{number}", row


# csv refuses fields over 128 KiB by default; a long text is the model's to truncate, not an error.
LONGEST_FIELD = 2**31 - 1


def _delimited_rows(path: Path, text: str, delimiter: str):
    csv.field_size_limit(max(csv.field_size_limit(), LONGEST_FIELD))
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
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
            raise UserError(f"{path}:{reader.line_num}: unreadable row ({error})") from None


def _example(row: dict, where: str, columns: Columns, require_label: bool) -> Example:
    text = row.get(columns.text)
    if text is None:
        raise UserError(f"{where}: missing column '{columns.text}' (columns: {', '.join(map(str, row))})")
    if not isinstance(text, str):
        raise UserError(f"{where}: column '{columns.text}' must be text, got {type(text).__name__}")
    pair = row.get(columns.pair) if columns.pair else None
    if pair is not None and not isinstance(pair, str):
        raise UserError(f"{where}: column '{columns.pair}' must be text, got {type(pair).__name__}")
    label = row.get(columns.label)
    if label is None and require_label:
        raise UserError(f"{where}: missing column '{columns.label}' (columns: {', '.join(map(str, row))})")
    if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int, float))):
        raise UserError(f"{where}: label must be a name or a number, got {json.dumps(label)}")
    if isinstance(label, int):
        label = str(label)  # integer class ids are names ("0", "1"); floats are regression targets
    if isinstance(label, float) and not math.isfinite(label):
        raise UserError(f"{where}: label is not a finite number")
    return Example(text=text, text_pair=pair or None, label=label, source=where)


# ---------------------------------------------------------------- labels


def infer_labels(examples: list[Example]) -> list[str] | None:
    """Label names from training data (sorted, so the order is stable), or None for regression."""
    values = [e.label for e in examples]
    if all(isinstance(v, float) for v in values):
        return None
    if any(isinstance(v, float) for v in values):
        bad = next(e for e in examples if isinstance(e.label, float))
        raise UserError(f"{bad.source}: label {bad.label} is a number while other labels are names")
    labels = sorted(set(values))
    return labels


def check_labels(examples: list[Example], labels: list[str] | None, split: str) -> None:
    """Every example's label must be one of the task's labels (or a number, for regression)."""
    for example in examples:
        if example.label is None:
            continue
        if labels is None:
            if isinstance(example.label, str):
                try:
                    float(example.label)
                except ValueError:
                    raise UserError(
                        f"{example.source}: label '{example.label}' is not a number (regression task)"
                    ) from None
        elif example.label not in labels:
            raise UserError(
                f"{example.source}: unknown label '{example.label}' in {split} (labels: {', '.join(labels)})"
            )


def _as_regression(examples: list[Example]) -> list[Example]:
    return [
        Example(e.text, e.text_pair, None if e.label is None else float(e.label), e.source) for e in examples
    ]


# ---------------------------------------------------------------- tasks


def load_task(
    spec: str,
    split_seed: int | None = None,
    columns: Columns = Columns(),
    labels: list[str] | None = None,
) -> Task:
    """A task from a folder (task.json + train/dev/test files, or K-<seed>/ split folders),
    from a single training file, or from the name of a task in the shared benchmark data."""
    path = Path(spec)
    if not path.exists():
        found = find_benchmark_task(spec)
        if found is None:
            raise UserError(f"task not found: {spec} (not a file, a folder, or a task in {data_root() or '../shared/data'})")
        path = found
    if path.is_file():
        train = read_examples(path, columns)
        return _finish_task(path.stem, labels, "accuracy", train, [], [], str(path))
    return _task_from_folder(path, split_seed, columns, labels)


def _task_from_folder(folder: Path, split_seed: int | None, columns: Columns, labels: list[str] | None) -> Task:
    meta = _task_meta(folder)
    name = meta.get("task") or folder.name
    metric = meta.get("metric", "accuracy")
    metric = METRIC_ALIASES.get(metric, metric)
    if metric not in METRICS:
        raise UserError(f"{folder / 'task.json'}: unknown metric '{metric}' (known: {', '.join(METRICS)})")
    if labels is None and "labels" in meta:
        labels = meta["labels"]
        regression = labels is None
    else:
        regression = False
    split_folder = _split_folder(folder, split_seed)
    train = _split(split_folder, "train", columns)
    if not train:
        raise UserError(f"{folder}: no train.jsonl/.csv/.tsv in the task folder")
    dev = _split(split_folder, "dev", columns) or _split(split_folder, "validation", columns)
    test = _split(folder, "test", columns) or _split(split_folder, "test", columns)
    task = _finish_task(name, labels, metric, train, dev, test, str(split_folder), known_regression=regression)
    return task


def _task_meta(folder: Path) -> dict:
    meta_path = folder / "task.json"
    if not meta_path.is_file():
        return {}
    try:
        return json.loads(_read_text(meta_path))
    except json.JSONDecodeError as error:
        raise UserError(f"{meta_path}:{error.lineno}: malformed JSON ({error.msg})") from None


def _split_folder(folder: Path, split_seed: int | None) -> Path:
    """Few-shot task folders keep their splits in K-<seed>/ subfolders (LM-BFF layout)."""
    if any((folder / f"train{s}").is_file() for s in (".jsonl", ".csv", ".tsv")):
        return folder
    seeds = sorted(p for p in folder.glob("*-*") if p.is_dir() and p.name.split("-")[-1].isdigit())
    if not seeds:
        return folder
    if split_seed is None:
        split_seed = 42 if any(p.name.endswith("-42") for p in seeds) else int(seeds[0].name.split("-")[-1])
    for candidate in seeds:
        if candidate.name.split("-")[-1] == str(split_seed):
            return candidate
    names = ", ".join(p.name for p in seeds)
    raise UserError(f"{folder}: no split for seed {split_seed} (available: {names})")


def _split(folder: Path, name: str, columns: Columns) -> list[Example]:
    for suffix in (".jsonl", ".csv", ".tsv"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return read_examples(path, columns)
    return []


def _finish_task(name, labels, metric, train, dev, test, source, known_regression=False) -> Task:
    if known_regression:
        labels = None
    elif labels is None:
        labels = infer_labels(train)
    if labels is not None:
        labels = [str(label) for label in labels]
        seen = {e.label for e in train}
        if len(seen) < 2:
            raise UserError(f"{source}: the training data has one class only ('{next(iter(seen))}')")
        if len(set(labels)) < 2:
            raise UserError(f"{source}: a task needs at least two labels, found only {labels}")
    for split_name, examples in (("train", train), ("dev", dev), ("test", test)):
        check_labels(examples, labels, split_name)
    if labels is None:
        train, dev, test = _as_regression(train), _as_regression(dev), _as_regression(test)
        metric = "pearson" if metric == "accuracy" else metric
    return Task(name=name, labels=labels, metric=metric, train=train, dev=dev, test=test, source=source)


def data_root() -> Path | None:
    """The shared benchmark data: $PRETUNE_DATA, else ../shared/data beside the project or cwd."""
    candidates = [os.environ.get("PRETUNE_DATA")]
    here = Path(__file__).resolve()
    candidates += [str(parent / "shared" / "data") for parent in list(here.parents)[:5]]
    candidates += [str(Path.cwd().parent / "shared" / "data"), str(Path.cwd() / "shared" / "data")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def find_benchmark_task(name: str) -> Path | None:
    """Resolve a short task name (`sst-2`, `fewshot/sst-2`, `full/trec`) in the shared data."""
    root = data_root()
    if root is None:
        return None
    for candidate in (root / name, root / "fewshot" / name, root / "full" / name):
        if (candidate / "task.json").is_file():
            return candidate
    return None


# ---------------------------------------------------------------- sampling


def sample_k_shot(examples: list[Example], k: int, seed: int, exclude: set | None = None) -> list[Example]:
    """K examples per class, drawn with a seed (balanced). Regression: K x 2 examples at random."""
    rng = random.Random(seed)
    pool = [e for e in examples if exclude is None or id(e) not in exclude]
    if pool and isinstance(pool[0].label, float):
        return rng.sample(pool, min(len(pool), 2 * k))
    by_label: dict = {}
    for example in pool:
        by_label.setdefault(example.label, []).append(example)
    chosen = []
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < k:
            raise UserError(f"only {len(group)} examples of label '{label}' to sample {k} per class from")
        chosen += rng.sample(group, k)
    rng.shuffle(chosen)
    return chosen


def few_shot_task(task: Task, k: int, seed: int) -> Task:
    """The LM-BFF protocol on a full dataset: K per class for training and a dev set of equal size."""
    train = sample_k_shot(task.train, k, seed)
    taken = {id(e) for e in train}
    dev_pool = task.dev if task.dev else task.train
    dev = sample_k_shot(dev_pool, k, seed + 1, exclude=taken)
    return Task(task.name, task.labels, task.metric, train, dev, task.test, f"{task.source} (K={k}, seed {seed})")
