"""Expected metrics computed outside the code under test's metric plumbing, for assertions that can fail."""

from __future__ import annotations

import torch

from pretune.api import RunConfig, build_method, prepare_task


def accuracy_by_hand(config: RunConfig, split: str = "test") -> float:
    """The untrained method's accuracy on a split: argmax of its label scores against the labels."""
    task = prepare_task(config)
    method = build_method(config, task)
    method.finalize()
    examples = getattr(task, split)
    predictions = method.label_scores(examples).argmax(dim=-1)
    return float((predictions == torch.tensor(task.targets(examples))).float().mean())
