"""The tuning methods. Each maps a batch of examples to one score per label (see `base`)."""

from __future__ import annotations

from ..errors import UserError
from ..tuning import BodyTraining
from .base import OWN_ROLES, ROLES, Method, MethodConfig, Rates
from .cloze import ClozeConfig, ClozeMethod
from .head import HeadConfig, HeadMethod
from .presets import SPECS, MethodSpec

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in SPECS}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (choose one of {', '.join(METHODS)})")
    return METHODS[name]


def make_config(name: str, options: dict, task=None) -> MethodConfig:
    """A method's config from a flat dict of options; unknown keys are an error."""
    return method_spec(name).make_config(options, task)


def build_methods(name: str, backbone, task, config: MethodConfig, training) -> list[Method]:
    """The method's modules for a run: one, or one per prompt of a pattern ensemble (sharing the body)."""
    return method_spec(name).build(backbone, task, config, training)


def build_method(name: str, backbone, task, options: dict | None = None, training=None) -> Method:
    """One method from options (no ensemble): what tests and scripts construct directly."""
    spec = method_spec(name)
    training = training or BodyTraining.parse(spec.default_training)
    (method,) = spec.build(backbone, task, spec.make_config(dict(options or {}), task), training)
    return method


__all__ = [
    "METHODS", "OWN_ROLES", "ROLES", "ClozeConfig", "ClozeMethod", "HeadConfig", "HeadMethod", "Method",
    "MethodConfig", "MethodSpec", "Rates", "build_method", "build_methods", "make_config", "method_spec",
]
