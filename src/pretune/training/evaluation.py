"""Evaluation: label scores to predictions and the task's metrics.

Anything that scores (a method, a pattern ensemble) offers `label_scores(examples)`, the one path
from examples to label scores, and `score_items(items)` for examples it has featurized already.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import metrics
from ..data import Example, Task


def predictions_from_scores(task: Task, scores: torch.Tensor) -> np.ndarray:
    if task.is_regression:
        return scores.view(-1).numpy()
    return scores.argmax(dim=-1).numpy()


def task_metrics(task: Task, scores: torch.Tensor, targets: list) -> dict[str, float]:
    """The task's metrics of label scores against known targets."""
    return metrics.all_metrics(task.metric, predictions_from_scores(task, scores), np.asarray(targets), task.num_labels)


def evaluate(scorer, examples: list[Example], targets: list, batch_size: int = 32, progress: bool = False):
    """(metrics dict, scores) of a method or ensemble on examples with known targets."""
    scores = scorer.label_scores(examples, batch_size, progress)
    return task_metrics(scorer.task, scores, targets), scores
