"""Which of the pretrained body's parameters train: a choice independent of the method.

- `frozen`  nothing in the body trains (only the method's head or prompt)
- `full`    everything trains
- `bitfit`  only the bias terms train (Ben Zaken et al. 2021)
- `last:N`  the top N transformer layers train (and the final norm / LM-head transform above them)
- `lora`    low-rank adapters injected by the `peft` library train; the body stays frozen
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .errors import UserError

MODES = ("frozen", "full", "bitfit", "lora", "last:N")


@dataclass(frozen=True)
class BodyTraining:
    mode: str = "frozen"  # frozen | full | bitfit | lora | last
    last_layers: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05

    @classmethod
    def parse(cls, spec: str, **lora) -> BodyTraining:
        spec = (spec or "frozen").strip()
        match = re.fullmatch(r"last:(\d+)", spec)
        if match:
            if int(match.group(1)) < 1:
                raise UserError(f"--train {spec}: N must be at least 1")
            return cls("last", int(match.group(1)), **lora)
        if spec not in ("frozen", "full", "bitfit", "lora"):
            raise UserError(f"unknown --train '{spec}' (choose one of {', '.join(MODES)})")
        return cls(spec, **lora)

    def __str__(self) -> str:
        return f"last:{self.last_layers}" if self.mode == "last" else self.mode

    @property
    def is_frozen(self) -> bool:
        return self.mode == "frozen"


def apply_body_training(model: nn.Module, training: BodyTraining) -> nn.Module:
    """Set requires_grad on the body (and inject LoRA layers in place); returns the same model.
    Applied once per model: a pattern ensemble's members share one body."""
    if getattr(model, "_pretune_body_training", None) == training:
        return model  # (LoRA injected twice would nest adapters)
    model._pretune_body_training = training
    model.requires_grad_(training.mode == "full")
    if training.mode == "bitfit":
        for name, param in model.named_parameters():
            param.requires_grad = name.endswith(".bias") or name == "bias"
    elif training.mode == "last":
        _unfreeze_top_layers(model, training.last_layers)
    elif training.mode == "lora":
        _inject_lora(model, training)
    return model


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise UserError(f"cannot find the transformer layers of {type(model).__name__} for --train last:N")
    return max(lists, key=len)


def _unfreeze_top_layers(model: nn.Module, count: int) -> None:
    """The top `count` blocks train, and everything above the stack (final norm, an MLM head's
    transform); the embeddings (and an output layer tied to them) and the lower blocks stay frozen."""
    layers = transformer_layers(model)
    if count > len(layers):
        raise UserError(f"--train last:{count}: the model has only {len(layers)} layers")
    lower = {id(p) for layer in list(layers)[: len(layers) - count] for p in layer.parameters()}
    embedding_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, param in model.named_parameters():
        is_embedding = id(param) in embedding_ids or "embed" in name
        param.requires_grad = id(param) not in lower and not is_embedding


def _inject_lora(model: nn.Module, training: BodyTraining) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=training.lora_r,
        lora_alpha=training.lora_alpha,
        lora_dropout=training.lora_dropout,
        target_modules=_lora_targets(model),
    )
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name


def _lora_targets(model: nn.Module) -> list[str]:
    """Attention query and value projections, under the names the common families use."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for pair in (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("c_attn",)):
        if all(p in names for p in pair):
            return list(pair)
    raise UserError(f"cannot find attention projections in {type(model).__name__} for --train lora")
