"""The contract every tuning method fulfils: examples in, one score per label out.

A method is an `nn.Module` that
1. `featurize`s examples once into items (token ids, rendered prompts, or a frozen body's cached features),
2. `collate`s a list of items into a typed batch (see `batches`),
3. maps a batch to scores `[batch, num_labels]` in `forward` (`[batch, 1]` for regression).

`label_scores` is the one path from examples to scores (the API, the CLI, the benchmark and the
recipes all take it). The trainer sees only these steps, so it serves every method alike.
Which parameters train is the method's business: `parameter_groups` names them by role, and the
trainer gives each role its learning rate and weight decay from the run's configuration (and the
method's `default_rates` where the configuration gives none). What is saved is exactly what
trained (`trainable_state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..data import Example, Task
from ..errors import UserError
from ..precision import FLOAT32, Precision
from ..sharding import shard_unit_classes, without_autograd
from ..tuning import BodyTraining, apply_body_training

# Parameter roles: the method's own new parameters train at `--lr`, the body's at `--body-lr`;
# `no_decay` holds the body's biases and norms, which take no weight decay.
OWN_ROLES = ("head", "prompt")
ROLES = (*OWN_ROLES, "body", "no_decay")


@dataclass(frozen=True)
class Rates:
    """A method's learning rates when the user gives none."""

    own: float | None  # its own new parameters (head, prompt); None: it adds none
    body: float  # the pretrained body's trainable parameters


@dataclass
class MethodConfig:
    """Base of the per-method config dataclasses (built from a run's options)."""

    def validate(self, task: Task | None = None) -> None:
        """Check the options (and fill task-dependent defaults) before any model loads."""

    def default_rates(self, training: BodyTraining) -> Rates:
        raise NotImplementedError


class Method(nn.Module):
    """Base class: subclasses set `name`, `config_class` and implement featurize, collate, forward."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    precision: Precision = FLOAT32  # the number format of the forward passes (see `use_precision`)

    def __init__(self, backbone: Backbone, task: Task, config: MethodConfig, training: BodyTraining):
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.config = config
        self.body_training = training
        self.model = apply_body_training(backbone.model, training)  # registered: moves with .to()

    @property
    def _no_split_modules(self) -> list[str]:
        """The body's layer classes that FSDP may shard one by one (transformers' name for them, which
        accelerate reads under `fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP`); see `shard_unit_classes`."""
        return shard_unit_classes(self.model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.body_training.is_frozen:
            self.model.eval()  # a frozen body never drops out: its features must not change
        return self

    # -- the steps ----------------------------------------------------------------------
    def featurize(self, examples: list[Example], progress: bool = True) -> list:
        raise NotImplementedError

    def collate(self, items: list):
        raise NotImplementedError

    def forward(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def item_length(self, item) -> int:
        """How long an item is, so evaluation can batch items of similar length together."""
        return len(item)

    def splits_exactly(self) -> bool:
        """Whether a training batch scored in parts gives the scores of the batch scored whole: true
        when nothing in the forward pass draws random numbers (a frozen body is in eval mode and no
        dropout of the method's own is active), so the trainer may cut a batch by length."""
        if not self.body_training.is_frozen:
            return False  # a body that trains drops out (attention dropout is not a module to inspect)
        return not any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in self.modules())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by role (`ROLES`)."""
        raise NotImplementedError

    @property
    def start_is_usable(self) -> bool:
        """Whether the untrained state is already a model worth keeping (zero-shot PET): the trainer then
        evaluates it on dev at step 0 and keeps it if training never beats it."""
        return False

    # -- number format ----------------------------------------------------------------------
    def use_precision(self, precision: Precision) -> None:
        """Compute in `precision`: the frozen body held in its format, trainable parameters in float32.
        Called once the method's own parameters exist (they start from the float32 body)."""
        self.precision = precision
        precision.prepare(self)

    def autocast(self):
        """The context every forward pass of this method runs in (the trainer's and the scorer's)."""
        return self.precision.autocast(self.device.type)

    # -- examples to label scores ---------------------------------------------------------
    def label_scores(self, examples: list[Example], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """Label scores [N, C] of examples, in their order."""
        return self.score_items(self.featurize(examples, progress=progress), batch_size, progress)

    def score_items(self, items: list, batch_size: int = 32, progress: bool = False, desc: str = "scoring") -> torch.Tensor:
        """Label scores [N, C] for featurized items, batched by similar length and returned in order."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(items)), key=lambda i: self.item_length(items[i]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        out = [None] * len(items)
        for chunk in tqdm(chunks, desc=desc, unit="batch", disable=not progress or len(chunks) < 2, leave=False):
            with without_autograd(self), self.autocast():
                scores = self(self.collate([items[i] for i in chunk]).to(self.device)).float().cpu()
            for row, index in zip(scores, chunk):
                out[index] = row
        self.train(was_training)
        if not out:
            return torch.zeros(0, self.task.num_labels)  # no items: no rows, still one column per label
        return torch.stack(out)

    # -- what trained ---------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train: a frozen body is never saved with the run."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise UserError(f"weights for parameters this method does not have: {', '.join(unknown[:3])}")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise UserError(f"weights {name} have shape {list(tensor.shape)}, the method's {list(own[name].shape)}")
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


def trainable(params) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def body_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable body parameters: `body`, and `no_decay` for biases and norms' scales (standard): the
    one-dimensional ones (every norm layer's parameters are vectors, so no name needs reading)."""
    groups: dict[str, list[nn.Parameter]] = {"body": [], "no_decay": []}
    for param in model.parameters():
        if param.requires_grad:
            groups["no_decay" if param.ndim < 2 else "body"].append(param)
    return groups
