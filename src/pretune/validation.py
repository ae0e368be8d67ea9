"""Checks at the boundary: the range of every numeric option, the known devices, and the types of
a configuration read from a file (config.yaml, a method's options).

One table holds the range of every numeric option, whether it comes from the command line, the
Python API or a run folder's config.yaml, so a value that makes no sense (infinite, NaN, a seed
of 2**70, a rank of 0, a negative length) is one line naming the option, never a traceback or a
run that trains on nonsense.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, fields

from .errors import UserError


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    integer: bool = False
    low_open: bool = False  # the low end itself is not allowed (a learning rate of 0)
    high_open: bool = False

    def describe(self) -> str:
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        kind = "a whole number" if self.integer else "a number"
        return f"{kind} in {left}{_show(self.low)}, {_show(self.high)}{right}"


BIG = 10**9  # counts nobody needs more of (steps, batch sizes)
SEEDS = Range(0, 2**32 - 1, integer=True)  # numpy's generator takes 32-bit seeds

# Field name -> allowed values. The option's flag is the name with dashes (`body_lr`: --body-lr).
RANGES: dict[str, Range] = {
    # training
    "steps": Range(1, BIG, integer=True),
    "epochs": Range(0, 10**6, low_open=True),
    "batch_size": Range(1, 10**6, integer=True),
    "eval_batch_size": Range(1, 10**6, integer=True),
    "grad_accum": Range(1, 10**6, integer=True),
    # any finite positive rate: a huge one is the divergence check's to stop, with its step
    "lr": Range(0, math.inf, low_open=True, high_open=True),
    "body_lr": Range(0, math.inf, low_open=True, high_open=True),
    "weight_decay": Range(0, 10),
    "warmup_ratio": Range(0, 1),
    "max_grad_norm": Range(0, 10**6),  # 0: no clipping
    "eval_every": Range(1, BIG, integer=True),
    "patience": Range(1, BIG, integer=True),
    "seed": SEEDS,
    "checkpoint_every": Range(0, BIG, integer=True),
    # the run
    "lora_r": Range(1, 4096, integer=True),
    "lora_alpha": Range(1, 10**6, integer=True),
    "split_seed": SEEDS,
    "shots": Range(1, 10**6, integer=True),
    # methods
    "hidden": Range(1, 65536, integer=True),
    "dropout": Range(0, 1, high_open=True),
    "max_length": Range(1, 10**6, integer=True),
    "encode_batch_size": Range(1, 10**6, integer=True),
    "aux_lm_weight": Range(0, 10**6),
    "aux_batch_size": Range(1, 10**6, integer=True),
    "distil_temperature": Range(0, 10**6, low_open=True),
    "prompt_length": Range(1, 4096, integer=True),
}

# Soft tokens one [P*N] may ask for: more than any model has positions.
MAX_SOFT_TOKENS = 4096

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_numbers(values: dict, where: str = "") -> None:
    """Every numeric option among `values` (None: not set) is a finite number in its range."""
    for name, value in values.items():
        allowed = RANGES.get(name)
        if allowed is None or value is None:
            continue
        check_number(f"{where}{flag(name)}", value, allowed)


def check_number(label: str, value, allowed: Range) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{label} must be {allowed.describe()}, got {_show(value)}")
    if allowed.integer and not isinstance(value, int):
        raise UserError(f"{label} must be a whole number, got {_show(value)}")
    if not math.isfinite(value):
        raise UserError(f"{label} must be a finite number, got {value}")
    too_low = value <= allowed.low if allowed.low_open else value < allowed.low
    too_high = value >= allowed.high if allowed.high_open else value > allowed.high
    if too_low or too_high:
        raise UserError(f"{label} must be {allowed.describe()}, got {_show(value)}")


def check_device(name) -> None:
    if not isinstance(name, str) or not DEVICE.fullmatch(name):
        raise UserError(f"unknown --device '{name}' (choose auto, cpu, cuda, cuda:N or mps)")


def check_fields(cls, data, where: str) -> None:
    """`data` can build the dataclass `cls`: a mapping with only its fields, each of its declared
    type (an int where a float is declared is fine; a bool is never a number)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of options, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise UserError(f"{where}: unknown option {', '.join(unknown)} (known: {', '.join(known)})")
    for name, value in data.items():
        expected = _allowed_types(hints[name])
        if expected is not None and not _is_instance(value, expected):
            names = " or ".join(sorted(t.__name__ if t is not type(None) else "null" for t in expected))
            raise UserError(f"{where}: {name} must be {names}, got {_type_name(value)} {_show(value)}")


def _allowed_types(hint) -> set | None:
    """The plain types a declared type allows; None when it is not one this check understands."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [_allowed_types(arg) for arg in typing.get_args(hint)]
        return None if any(m is None for m in members) else set().union(*members)
    if hint is type(None):
        return {type(None)}
    base = origin or hint
    if base in (int, float, str, bool, list, dict):
        return {base}
    return None  # a nested dataclass: checked on its own


def _is_instance(value, expected: set) -> bool:
    if isinstance(value, bool):
        return bool in expected
    if isinstance(value, int) and float in expected:
        return True
    return isinstance(value, tuple(expected))


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
