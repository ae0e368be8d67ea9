"""The one training loop for every method, and the evaluator and scorer they share.

A method maps a batch to label scores; here that becomes cross-entropy (soft targets for
distillation, MSE for regression), AdamW with the method's parameter groups, linear warmup and
decay, gradient accumulation and clipping, evaluation on dev every N steps, the best state kept
by the task's metric, and early stopping.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics
from .data import Task
from .errors import UserError
from .methods.base import Method


@dataclass
class TrainConfig:
    steps: int | None = None  # optimizer steps; when None, `epochs` decides
    epochs: float = 10.0
    batch_size: int = 8
    eval_batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None  # the method's own parameters (head, prompt); None: the method's default
    body_lr: float | None = None  # the pretrained body's trainable parameters; None: the method's default
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None  # steps between dev evaluations; None: about 10 per run, at most one per epoch
    patience: int | None = None  # evaluations without improvement before stopping; None: never stop early
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        for name in ("batch_size", "eval_batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")
        if self.steps is None and not self.epochs > 0:
            raise UserError(f"--epochs must be positive, got {self.epochs}")
        for name in ("lr", "body_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best_dev: float | None  # the task metric on dev at the kept state
    history: list[dict] = field(default_factory=list)  # one row per evaluation: step, loss, dev metric
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    stopped_early: bool = False


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available on this machine")
    return torch.device(name)


# ---------------------------------------------------------------- losses and targets


def target_tensor(task: Task, targets: list) -> torch.Tensor:
    """Label indices, float regression targets, or soft label distributions (rows of floats)."""
    if task.is_regression:
        return torch.tensor(targets, dtype=torch.float32)
    if targets and isinstance(targets[0], (list, tuple, np.ndarray, torch.Tensor)):
        return torch.as_tensor(np.asarray(targets, dtype=np.float32))
    return torch.tensor(targets, dtype=torch.long)


def loss_fn(task: Task, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    scores = scores.float()
    if task.is_regression:
        return F.mse_loss(scores.view(-1), targets.view(-1))
    return F.cross_entropy(scores, targets)  # float targets are soft labels (a distribution per row)


# ---------------------------------------------------------------- scoring and evaluation


def _move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.inference_mode()
def score(method: Method, items: list[dict], batch_size: int = 32, progress: bool = False, desc: str = "scoring"):
    """Label scores [N, C] for featurized items, batched by similar length and returned in order."""
    was_training = method.training
    method.eval()
    order = sorted(range(len(items)), key=lambda i: method.item_length(items[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = [None] * len(items)
    for chunk in tqdm(chunks, desc=desc, unit="batch", disable=not progress or len(chunks) < 2, leave=False):
        batch = _move(method.collate([items[i] for i in chunk]), method.device)
        scores = method(batch).float().cpu()
        for row, index in zip(scores, chunk):
            out[index] = row
    method.train(was_training)
    if not out:
        return torch.zeros(0, max(method.task.num_labels, 1))
    return torch.stack(out)


def predictions_from_scores(task: Task, scores: torch.Tensor) -> np.ndarray:
    if task.is_regression:
        return scores.view(-1).numpy()
    return scores.argmax(dim=-1).numpy()


def evaluate(method: Method, items: list[dict], targets: list, batch_size: int = 32, progress: bool = False):
    """(metrics dict, scores) of the method on featurized items with known targets."""
    task = method.task
    scores = score(method, items, batch_size, progress, desc="evaluating")
    predictions = predictions_from_scores(task, scores)
    return metrics.all_metrics(task.metric, predictions, np.asarray(targets), task.num_labels), scores


# ---------------------------------------------------------------- the loop


class Trainer:
    """Trains a method's parameters on featurized items; keeps the state that did best on dev."""

    def __init__(self, method: Method, config: TrainConfig, progress: bool = True, log=print):
        config.validate()
        self.method = method
        self.config = config
        self.progress = progress
        self.log = log or (lambda *_: None)
        self.device = resolve_device(config.device)

    def _optimizer(self):
        groups = [g for g in self.method.param_groups(self.config.lr, self.config.body_lr) if g["params"]]
        if not groups:
            raise UserError(f"method '{self.method.name}' has no trainable parameters with this configuration")
        return torch.optim.AdamW(groups)

    def _total_steps(self, n_train: int) -> int:
        if self.config.steps is not None:
            return self.config.steps
        per_epoch = math.ceil(n_train / (self.config.batch_size * self.config.grad_accum))
        return max(1, math.ceil(per_epoch * self.config.epochs))

    def _batches(self, n_train: int, generator: torch.Generator):
        """Shuffled micro-batches of indices, epoch after epoch, forever."""
        while True:
            order = torch.randperm(n_train, generator=generator).tolist()
            for start in range(0, n_train, self.config.batch_size):
                yield order[start : start + self.config.batch_size]

    def fit(self, train_items: list[dict], train_targets: list, dev_items=None, dev_targets=None) -> TrainResult:
        config, method, task = self.config, self.method, self.method.task
        if not train_items:
            raise UserError("no training examples")
        set_seed(config.seed)
        method.to(self.device)
        optimizer = self._optimizer()
        total = self._total_steps(len(train_items))
        warmup = int(config.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total))
        per_epoch = math.ceil(len(train_items) / (config.batch_size * config.grad_accum))
        eval_every = config.eval_every or max(per_epoch, math.ceil(total / 10))
        has_dev = bool(dev_items)
        targets_all = target_tensor(task, train_targets)

        generator = torch.Generator().manual_seed(config.seed)
        batches = self._batches(len(train_items), generator)
        best_metric, best_step, best_state = -math.inf, None, None
        history, bad_evals, seen, losses = [], 0, 0, []
        stopped_early = False
        method.train()
        start = time.perf_counter()
        bar = tqdm(total=total, desc=f"training {method.name}", unit="step", disable=not self.progress)
        step = 0
        while step < total:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                indices = next(batches)
                batch = _move(method.collate([train_items[i] for i in indices]), self.device)
                loss = loss_fn(task, method(batch), targets_all[indices].to(self.device)) / config.grad_accum
                loss.backward()
                step_loss += loss.item()
                seen += len(indices)
            if not math.isfinite(step_loss):
                raise UserError(f"training diverged: the loss became {step_loss} at step {step + 1}; try a lower --lr")
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], config.max_grad_norm
                )
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if step % eval_every == 0 or step == total:
                row = {"step": step, "loss": float(np.mean(losses[-eval_every:]))}
                if has_dev:
                    dev_metrics, _ = evaluate(method, dev_items, dev_targets, config.eval_batch_size)
                    method.train()
                    row.update({f"dev_{k}": v for k, v in dev_metrics.items()})
                    current = dev_metrics[task.metric]
                    if current > best_metric:
                        best_metric, best_step, bad_evals = current, step, 0
                        best_state = {k: v.to("cpu", copy=True) for k, v in method.trainable_state_dict().items()}
                    else:
                        bad_evals += 1
                history.append(row)
                self.log(_format_row(row))
                if config.patience is not None and bad_evals >= config.patience:
                    stopped_early = True
                    break
        bar.close()
        seconds = time.perf_counter() - start
        if best_state is not None:
            method.load_trainable_state_dict(best_state)
        method.eval()
        return TrainResult(
            steps=step,
            best_step=best_step if has_dev else step,
            best_dev=best_metric if has_dev else None,
            history=history,
            train_seconds=seconds,
            examples_per_second=seen / seconds if seconds > 0 else 0.0,
            stopped_early=stopped_early,
        )


def _linear_schedule(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _format_row(row: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
