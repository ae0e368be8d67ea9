"""Training a probe's prompt on one relation and measuring precision@1.

Cross-entropy over the whole vocabulary at the answer's position, AdamW on the prompt's
parameters only (the body is frozen). Dev precision@1 is measured before training (the untrained
prompt is a candidate too) and after every epoch; the best state is kept and training stops once
`patience` epochs pass without a better one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .prober import Prober

# The prompt's learning rate when none is given. Embeddings trained directly (encoder none, deep
# prompts' keys and values) take larger steps than an encoder whose residual output starts at zero.
RATES = {"lstm": 1e-3, "mlp": 1e-3, "none": 3e-2, "prefix": 1e-2}


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float | None = None
    patience: int = 2
    max_train: int | None = None  # use at most this many training facts (the runner cuts them)
    seed: int = 13


@dataclass
class TrainOutcome:
    steps: int = 0
    best_step: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, dev P@1) at each evaluation


def default_rate(prober: Prober) -> float:
    return RATES["prefix"] if prober.setup.input == "prefix" else RATES[prober.setup.encoder]


@torch.inference_mode()
def predictions(prober: Prober, items: list[dict], batch_size: int) -> list[int]:
    """The top-1 token of each item, in the items' order (batched by length for speed)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]["rendered"]))
    top = [0] * len(items)
    prober.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = prober(prober.collate([items[i] for i in chunk])[0])
        for i, token in zip(chunk, logits.argmax(dim=-1).tolist()):
            top[i] = token
    return top


def precision_at_1(prober: Prober, items: list[dict], batch_size: int) -> float | None:
    """Percentage of items whose top-1 token is the object; None for no items."""
    if not items:
        return None
    top = predictions(prober, items, batch_size)
    return 100.0 * sum(t == item["target"] for t, item in zip(top, items)) / len(items)


def train_prompt(prober: Prober, train: list[dict], dev: list[dict], settings: TrainSettings,
                 progress: bool = True) -> TrainOutcome:
    """Train the prober's prompt on `train`, keep the state best on `dev`; returns the record."""
    parameters = prober.trainable_parameters()
    outcome = TrainOutcome()
    if not parameters or not train:
        return outcome
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr or default_rate(prober), weight_decay=0.0)
    best = precision_at_1(prober, dev, settings.eval_batch_size) or 0.0
    outcome.curve.append((0, best))
    best_state, waited = _snapshot(parameters), 0
    steps_per_epoch = -(-len(train) // settings.batch_size)
    bar = tqdm(total=settings.epochs * steps_per_epoch, desc="train", leave=False, disable=not progress)
    for _ in range(settings.epochs):
        prober.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            batch, targets = prober.collate([train[i] for i in order[start : start + settings.batch_size]])
            loss = nn.functional.cross_entropy(prober(batch), targets.to(prober.model.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            outcome.steps += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{best:.1f}")
        score = precision_at_1(prober, dev, settings.eval_batch_size) or 0.0
        outcome.curve.append((outcome.steps, score))
        if score > best:
            best, best_state, waited, outcome.best_step = score, _snapshot(parameters), 0, outcome.steps
        else:
            waited += 1
            if waited >= settings.patience:
                break
    bar.close()
    _restore(parameters, best_state)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _snapshot(parameters: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


@torch.no_grad()
def _restore(parameters: list[nn.Parameter], state: list[torch.Tensor]) -> None:
    for parameter, saved in zip(parameters, state):
        parameter.copy_(saved)
