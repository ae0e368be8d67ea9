"""The learning-rate schedule: `--lr-scheduler linear | cosine | constant`, with warmup from `--warmup-ratio`.

The schedules are transformers' own (`get_scheduler`), shifted by one step: step k of a run (0-based)
trains at the rate transformers gives step k + 1 of a schedule with `warmup + 1` warmup steps and
`total + 1` steps in all. So the first step trains at `1 / (warmup + 1)` of the rate rather than at
zero (transformers' first warmup step would not train at all), and the linear schedule is exactly
the one pretune used before it had a choice:

    linear    (k + 1) / (w + 1) while k < w, then (total - k) / (total - w)
    cosine    (k + 1) / (w + 1) while k < w, then (1 + cos(pi * (k - w) / (total - w))) / 2
    constant  (k + 1) / (w + 1) while k < w, then 1

with w = int(warmup_ratio * total).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads SCHEDULES: no torch at import
    import torch

SCHEDULES = ("linear", "cosine", "constant")
# transformers' names: its "constant" ignores warmup, "constant_with_warmup" is the one that has it.
_TRANSFORMERS_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def warmup_steps(warmup_ratio: float, total: int) -> int:
    return int(warmup_ratio * total)


def learning_rate_schedule(name: str, optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """A LambdaLR over `optimizer` (the plain torch optimizer) at step 0 of the run; call `step()` after
    each optimizer step. Its state_dict goes into checkpoints like any torch scheduler's."""
    from transformers import get_scheduler

    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; one of {', '.join(SCHEDULES)}")
    scheduler = get_scheduler(_TRANSFORMERS_NAMES[name], optimizer, num_warmup_steps=warmup + 1,
                              num_training_steps=total + 1)
    with warnings.catch_warnings():  # the one-step shift, before any optimizer step: torch warns about the order
        warnings.simplefilter("ignore")
        scheduler.step()
    return scheduler
