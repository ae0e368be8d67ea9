"""The contract every tuning method fulfils: examples in, one score per label out.

A method is an `nn.Module` that
1. `featurize`s examples once into items (token ids; or, for a frozen body, cached features),
2. `collate`s a list of items into a padded batch of tensors,
3. maps a batch to scores `[batch, num_labels]` in `forward` (`[batch, 1]` for regression).

The trainer, the evaluator and the predictor see only that, so they serve every method alike.
Which parameters train is the method's business (`param_groups`), and what is saved is exactly
what trained (`trainable_state_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backbones import Backbone
from ..data import Example, Task
from ..precision import FLOAT32, Precision
from ..tuning import BodyTraining, apply_body_training


@dataclass
class MethodConfig:
    """Base of the per-method config dataclasses (saved in a run's config.yaml)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, task: Task | None = None) -> None:
        """Check the options (and fill task-dependent defaults) before any model loads."""


class Method(nn.Module):
    """Base class: subclasses set `name`, `config_class` and implement the four steps."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Learning rates a method starts from when the user gives none: its own new parameters
    # (head, prompt encoder) usually want a much larger rate than a pretrained body.
    default_lr: ClassVar[float] = 1e-3
    default_body_lr: ClassVar[float] = 1e-5
    default_training: ClassVar[str] = "frozen"  # which body parameters train when the user does not say
    precision: Precision = FLOAT32  # the number format of the forward pass (see `use_precision`)

    @classmethod
    def check_backbone(cls, backbone: Backbone) -> None:
        """Refuse, with a UserError, a model this method cannot use (e.g. PET on an encoder)."""

    def __init__(self, backbone: Backbone, task: Task, config: MethodConfig, training: BodyTraining):
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.config = config
        self.body_training = training
        self.model = apply_body_training(backbone.model, training)  # registered: moves with .to()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.body_training.is_frozen:
            self.model.eval()  # a frozen body never drops out: its features must not change
        return self

    # -- the four steps ------------------------------------------------------------
    def featurize(self, examples: list[Example], progress: bool = True) -> list[dict]:
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self, lr: float | None, body_lr: float | None) -> list[dict]:
        """AdamW parameter groups, each with a `name` and its own `lr`."""
        raise NotImplementedError

    # -- optional hooks ------------------------------------------------------------
    def fit(self, trainer, train_items: list[dict], train_targets: list, dev_items=None, dev_targets=None):
        """Train with the shared trainer. A method that trains in phases (PET's pattern ensemble:
        one model per pattern, then distillation) overrides this and calls the trainer per phase."""
        return trainer.fit(train_items, train_targets, dev_items, dev_targets)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """An extra loss the trainer adds at each training step (PET: language modelling on
        unlabelled text); None for none."""
        return None

    # -- shared behaviour ----------------------------------------------------------
    def use_precision(self, precision: Precision) -> None:
        """Compute in `precision`: the frozen body held in its format, trainable parameters in float32.
        Called once the method's own parameters exist (they start from the float32 body)."""
        self.precision = precision
        precision.prepare(self)

    def autocast(self):
        """The context every forward pass of this method runs in (the trainer's and the scorer's)."""
        return self.precision.autocast(self.device.type)

    @staticmethod
    def item_length(item: dict) -> int:
        """How long an item is, so evaluation can batch items of similar length together."""
        ids = item.get("input_ids")
        return len(ids) if ids is not None else 0

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train: a frozen body is never saved with the run."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"weights for parameters this method does not have: {unknown[:3]}")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor.to(own[name].dtype))

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def finalize(self) -> None:
        """Called once after training, before saving: e.g. materialise computed prompt embeddings."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def new_parameter_group(name: str, params, lr: float, weight_decay: float = 0.01) -> dict:
    return {"name": name, "params": [p for p in params if p.requires_grad], "lr": lr, "weight_decay": weight_decay}


def body_parameter_group(model: nn.Module, lr: float, weight_decay: float = 0.01) -> list[dict]:
    """The trainable body parameters in two groups: no weight decay on biases and norms (standard)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = []
    if decay:
        groups.append({"name": "body", "params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"name": "body_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups
