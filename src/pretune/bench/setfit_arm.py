"""The SetFit anchor: what a practitioner gets from the `setfit` library with its defaults.

SetFit (Tunstall et al. 2022) tunes a sentence-transformers body contrastively on pairs of the
labelled examples (same label: similar, different: dissimilar; CosineSimilarityLoss), then fits a
logistic-regression head on the tuned body's embeddings. Run here as its README does it:
`SetFitModel.from_pretrained(folder)`, `TrainingArguments(seed=seed)` and every other setting at
setfit 1.2.0's default (one epoch over oversampled pairs, batch 16, body rate 2e-5), trained on the
split's 32 training examples. The dev set is only measured, never used to choose anything (SetFit's
recipe has no model selection). Pair tasks join the two texts with the tokenizer's separator token,
as SetFit has no pair input of its own. Classification only: SetFit's head is a classifier.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .. import metrics as task_metrics
from ..errors import UserError


def run_setfit(arm, spec) -> dict:
    """Train and evaluate SetFit on one (task, seed); returns the measured fields of a record."""
    task = spec.load_task()
    if task.is_regression:
        raise UserError(f"the setfit arm classifies; task {task.name} is a regression task")
    from ..backbones import resolve

    folder = resolve(spec.model)
    model = _model(folder)
    texts = _texts_of(model, task)
    start = time.perf_counter()
    _train(model, texts(task.train), task.targets(task.train), spec.seed)
    train_seconds = time.perf_counter() - start
    dev = _evaluate(model, task.dev, task, texts) if task.dev else None
    start = time.perf_counter()
    test_metrics, predictions = _evaluate(model, task.test, task, texts)
    eval_rate = len(task.test) / (time.perf_counter() - start)
    pairs_seen = _pairs_per_epoch(len(task.train), task.targets(task.train))
    return {
        "dev": dev[0] if dev else None,
        "test": test_metrics,
        "eval_examples_per_second": eval_rate,
        "train_seconds": train_seconds,
        "train_examples_per_second": pairs_seen / train_seconds if train_seconds > 0 else 0.0,
        "steps": None,
        "best_step": None,
        "history": [],
        "trainable_parameters": _parameter_count(model),
        "total_parameters": _parameter_count(model),
        "adapter_bytes": _saved_bytes(model),
        "labels": task.labels,
        "predictions": predictions.tolist(),
        "targets": list(task.targets(task.test)),
    }


def _model(folder: str):
    from setfit import SetFitModel

    return SetFitModel.from_pretrained(folder)


def _texts_of(model, task):
    separator = f" {model.model_body.tokenizer.sep_token or '|'} "

    def texts(examples) -> list[str]:
        return [e.text if e.text_pair is None else e.text + separator + e.text_pair for e in examples]

    return texts


def _train(model, texts: list[str], labels: list[int], seed: int) -> None:
    from datasets import Dataset
    from setfit import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory(prefix="pretune-setfit-") as scratch:
        # Only where it writes checkpoints departs from the defaults (they would land in the working folder).
        args = TrainingArguments(seed=seed, output_dir=str(Path(scratch) / "checkpoints"), report_to="none")
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
        trainer.train()


def _evaluate(model, examples, task, texts) -> tuple[dict, np.ndarray]:
    """(the task's metrics, predicted label indices) in the examples' order."""
    probabilities = np.asarray(model.predict_proba(texts(examples), as_numpy=True), dtype=float)
    predictions = probabilities.argmax(axis=-1)
    targets = np.asarray(task.targets(examples))
    return task_metrics.all_metrics(task.metric, predictions, targets, task.num_labels), predictions


def _pairs_per_epoch(size: int, labels: list[int]) -> int:
    """How many sentence pairs SetFit's default oversampling draws from `size` examples (its
    `sampling_strategy="oversampling"`: the majority kind of pair, positive or negative, sets the
    count and the minority kind is repeated to match it)."""
    counts = np.bincount(labels)
    positive = int(sum(c * (c - 1) // 2 for c in counts)) + size  # SetFit pairs each example with itself too
    negative = size * (size - 1) // 2 - int(sum(c * (c - 1) // 2 for c in counts))
    return 2 * max(positive, negative)


def _parameter_count(model) -> int:
    body = sum(p.numel() for p in model.model_body.parameters())
    head = model.model_head
    return body + int(np.size(getattr(head, "coef_", 0)) + np.size(getattr(head, "intercept_", 0)))


def _saved_bytes(model) -> int:
    with tempfile.TemporaryDirectory(prefix="pretune-setfit-save-") as folder:
        model.save_pretrained(folder)
        return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())

