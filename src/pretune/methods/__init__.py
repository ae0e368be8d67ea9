"""The tuning methods. Each maps a batch of examples to one score per label."""

from __future__ import annotations

from dataclasses import asdict, fields

from ..errors import UserError
from ..validation import check_fields, check_numbers
from .base import Method, MethodConfig
from .deep_prompt import DeepPromptConfig, DeepPromptMethod
from .head import HeadConfig, HeadMethod
from .pet import PetConfig, PetMethod
from .ptuning import PtuningConfig, PtuningMethod

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (HeadMethod, PetMethod, PtuningMethod, DeepPromptMethod)
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (choose one of {', '.join(METHODS)})")
    return METHODS[name]


def make_config(name: str, options: dict, task=None) -> MethodConfig:
    """A method's config dataclass from a flat dict of options; unknown keys are an error."""
    cls = method_class(name).config_class
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"method '{name}' has no option {', '.join(unknown)} (its options: {', '.join(sorted(known))})")
    check_fields(cls, options, f"method '{name}'")
    config = cls(**options)
    check_numbers(asdict(config))
    config.validate(task)
    return config


__all__ = [
    "METHODS", "Method", "MethodConfig", "HeadConfig", "HeadMethod", "PetConfig", "PetMethod", "PtuningConfig",
    "PtuningMethod", "DeepPromptConfig", "DeepPromptMethod", "method_class", "make_config",
]
