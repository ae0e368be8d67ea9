"""A training run's options (`TrainConfig`, checked before any model loads) and its outcome (`TrainResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import UserError
from ..validation import check_device, check_numbers
from .schedule import SCHEDULES
from .tracking import check_tracker


@dataclass
class TrainConfig:
    steps: int | None = None  # optimizer steps; when None, `epochs` decides
    epochs: float = 10.0
    batch_size: int = 8
    eval_batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None  # the method's own parameters (head, prompt); None: the method's default
    body_lr: float | None = None  # the pretrained body's trainable parameters; None: the method's default
    weight_decay: float = 0.01  # AdamW's, on every parameter but the body's biases and norms
    warmup_ratio: float = 0.06
    lr_scheduler: str = "linear"  # linear | cosine | constant, after the warmup (see `schedule`)
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None  # steps between dev evaluations; None: about 10 per run, at most one per epoch
    patience: int | None = None  # evaluations without improvement before stopping; None: never stop early
    eval_start: bool | None = None  # evaluate the untrained state (step 0) and keep it if best; None: where the method's start is usable
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int | None = None  # steps between checkpoints of a run folder; None: every 10 minutes; 0: at the end only
    report_to: str = "none"  # a tracker of accelerate's (tensorboard, wandb, ...) that also gets each step; needs a run folder

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
        if not self.weight_decay >= 0:
            raise UserError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise UserError(f"--checkpoint-every must be 0 (at the end only) or more, got {self.checkpoint_every}")
        if self.lr_scheduler not in SCHEDULES:
            raise UserError(f"--lr-scheduler {self.lr_scheduler!r}: choose one of {', '.join(SCHEDULES)}")
        check_tracker(self.report_to)
        check_numbers(self.to_dict())
        check_device(self.device)


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best_dev: float | None  # the task metric on dev at the kept state
    history: list[dict] = field(default_factory=list)  # one row per evaluation: step, loss, dev metric
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    stopped_early: bool = False
    generations: list[dict] = field(default_factory=list)  # iPET: what each generation trained on (`ipet`)
