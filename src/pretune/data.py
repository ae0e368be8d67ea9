"""Tasks: label sets, task folders (task.json + splits, or K-<seed>/ split folders), benchmark
task names, and k-shot sampling. The files themselves are read by `readers`.

Every problem in a user's file is reported as one line naming the file, the line and what is wrong.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .readers import DATA_SUFFIXES, Columns, Example, read_examples, read_text

__all__ = ["Columns", "Example", "Task", "read_examples", "load_task", "finish_task", "check_labels", "infer_labels"]

METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson")
# Other names task files use for the same metrics (GLUE's, scikit-learn's).
METRIC_ALIASES = {"matthews_correlation": "mcc", "matthews": "mcc", "acc": "accuracy", "pearsonr": "pearson"}


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
    columns: Columns = Columns(),  # noqa: B008 (frozen dataclass)
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
    if not path.is_dir():  # a data file; or a FIFO, device ..., which read_examples refuses
        train = read_examples(path, columns)
        return finish_task(path.stem, labels, "accuracy", train, [], [], str(path))
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
        raise UserError(f"{folder}: no train.jsonl/.csv/.tsv/.parquet in the task folder")
    dev = _split(split_folder, "dev", columns) or _split(split_folder, "validation", columns)
    test = _split(folder, "test", columns) or _split(split_folder, "test", columns)
    task = finish_task(name, labels, metric, train, dev, test, str(split_folder), known_regression=regression)
    return task


def _task_meta(folder: Path) -> dict:
    """task.json, checked: an object whose `task` and `metric` are names and whose `labels` are
    distinct names (or null: regression). Other keys (sizes, sources) are the data's own."""
    meta_path = folder / "task.json"
    if not os.path.lexists(meta_path):
        return {}
    text = read_text(meta_path, "task.json")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{meta_path}:{error.lineno}: malformed JSON ({error.msg})") from None
    except (ValueError, RecursionError):
        raise UserError(f"{meta_path}: unreadable JSON (a number too long or nesting too deep)") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    for key in ("task", "metric"):
        if key in meta and not isinstance(meta[key], str):
            raise UserError(f"{meta_path}: '{key}' must be a name, got {json.dumps(meta[key])[:40]}")
    if "labels" in meta:
        meta["labels"] = _meta_labels(meta["labels"], meta_path)
    return meta


def _meta_labels(labels, where: Path) -> list[str] | None:
    if labels is None:
        return None
    if not isinstance(labels, list):
        raise UserError(f"{where}: 'labels' must be a list of names (or null for regression), got {json.dumps(labels)[:40]}")
    names = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise UserError(f"{where}: label {json.dumps(label)[:40]} is not a name")
        name = str(label)
        if not name.strip() or name != name.strip():
            raise UserError(f"{where}: label {json.dumps(name)} is empty or has spaces around it")
        if name in names:
            raise UserError(f"{where}: label '{name}' is listed twice")
        names.append(name)
    return names


def _split_folder(folder: Path, split_seed: int | None) -> Path:
    """Few-shot task folders keep their splits in K-<seed>/ subfolders (LM-BFF layout)."""
    if any((folder / f"train{s}").is_file() for s in DATA_SUFFIXES):
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
    for suffix in DATA_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if os.path.lexists(path):  # there, even as a link to nothing: readable, or an error
            return read_examples(path, columns)
    return []


def finish_task(name, labels, metric, train, dev, test, source, known_regression=False) -> Task:
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
