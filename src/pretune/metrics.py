"""Task metrics: accuracy, F1 (binary, positive = last label), macro-F1, MCC, Pearson.

Plain numpy, so the numbers do not depend on an extra library's conventions.
"""

from __future__ import annotations

import numpy as np

HIGHER_IS_BETTER = True  # every metric here; the trainer keeps the maximum


def compute(metric: str, predictions, targets, num_labels: int | None = None) -> float:
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if len(targets) == 0:
        return float("nan")
    if metric == "accuracy":
        return accuracy(predictions, targets)
    if metric == "f1":
        return binary_f1(predictions, targets, positive=(num_labels or 2) - 1)
    if metric == "macro_f1":
        return macro_f1(predictions, targets, num_labels)
    if metric == "mcc":
        return mcc(predictions, targets, num_labels)
    if metric == "pearson":
        return pearson(predictions, targets)
    raise ValueError(f"unknown metric {metric}")


def all_metrics(metric: str, predictions, targets, num_labels: int | None) -> dict[str, float]:
    """The task's own metric plus the usual companions (classification) for reports."""
    if metric == "pearson":
        return {"pearson": compute("pearson", predictions, targets)}
    names = dict.fromkeys([metric, "accuracy", "macro_f1"])
    return {name: compute(name, predictions, targets, num_labels) for name in names}


def accuracy(predictions, targets) -> float:
    return float(np.mean(predictions == targets))


def _confusion(predictions, targets, num_labels: int | None) -> np.ndarray:
    n = num_labels or int(max(predictions.max(), targets.max()) + 1)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (targets.astype(int), predictions.astype(int)), 1)
    return matrix


def confusion_matrix(predictions, targets, num_labels: int | None = None) -> np.ndarray:
    """Rows are true labels, columns predicted labels."""
    return _confusion(np.asarray(predictions), np.asarray(targets), num_labels)


def _f1_per_class(matrix: np.ndarray) -> np.ndarray:
    true_pos = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    denominator = predicted + actual
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos), where=denominator > 0)


def binary_f1(predictions, targets, positive: int = 1) -> float:
    matrix = _confusion(predictions, targets, max(positive + 1, 2))
    return float(_f1_per_class(matrix)[positive])


def macro_f1(predictions, targets, num_labels: int | None = None) -> float:
    return float(_f1_per_class(_confusion(predictions, targets, num_labels)).mean())


def mcc(predictions, targets, num_labels: int | None = None) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); 0 when undefined."""
    matrix = _confusion(predictions, targets, num_labels).astype(float)
    total = matrix.sum()
    correct = np.trace(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    numerator = correct * total - predicted @ actual
    denominator = np.sqrt((total**2 - predicted @ predicted) * (total**2 - actual @ actual))
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(predictions, targets) -> float:
    predictions, targets = predictions.astype(float).ravel(), targets.astype(float).ravel()
    if predictions.std() == 0 or targets.std() == 0:
        return 0.0
    return float(np.corrcoef(predictions, targets)[0, 1])
