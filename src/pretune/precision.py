"""The number format a run computes in: float32, or bfloat16 / float16 where the hardware computes it fast.

`--dtype auto` (the default) picks bfloat16 on a CUDA device that supports it and on a CPU whose
instruction set computes it natively (Intel AMX, AVX512-BF16), float32 everywhere else: where bfloat16
is emulated it is several times *slower* than float32, and which machine a run lands on is known only
at run time.

In a reduced format:
- the frozen parameters of the body are held in it (half the memory, and the fast matrix kernels);
- parameters that train keep float32 master weights, and the forward pass runs under autocast, so
  full, partial and adapter fine-tuning mix the two safely;
- label scores, losses, metrics and the softmax over labels stay float32 (the methods and the
  trainer upcast what leaves the body).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
FLOAT32_MODULES = (nn.LayerNorm, nn.GroupNorm)  # torch's kernels: float32 weights, any input format
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU features with bfloat16 arithmetic in hardware


@dataclass(frozen=True)
class Precision:
    """A concrete number format and why it was chosen (for the log and the run folder)."""

    name: str  # float32 | bfloat16 | float16
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.name)

    @property
    def is_reduced(self) -> bool:
        return self.name != "float32"

    def autocast(self, device_type: str):
        """The context a forward pass runs in: autocast to the reduced format, or nothing for float32."""
        if not self.is_reduced:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def hold_frozen(self, model: nn.Module) -> None:
        """Frozen parameters in this format, trainable ones in float32 (master weights).

        Decided per module, over its own parameters: a module with any trainable parameter (a
        Linear whose bias trains under BitFit) keeps all of them in float32, and so do torch's
        layer and group norms, whose kernels accept a bfloat16 input with float32 weights but not
        the reverse. Buffers (rotary frequencies, position ids) stay as the model made them."""
        with torch.no_grad():
            for module in model.modules():
                own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
                keep = isinstance(module, FLOAT32_MODULES) or any(p.requires_grad for p in own)
                wanted = torch.float32 if keep else self.dtype
                for param in own:
                    if param.dtype != wanted:
                        param.data = param.data.to(wanted)  # in place: tied weights stay one tensor

    def prepare(self, model: nn.Module) -> None:
        """Make `model` compute in this format: frozen weights held in it (`hold_frozen`) and, on a
        CPU, attention trained in float32 (`float32_attention_backward`)."""
        self.hold_frozen(model)
        if self.is_reduced:
            float32_attention_backward()

    def describe(self) -> str:
        return f"computing in {self.name}: {self.reason}" if self.reason else f"computing in {self.name}"


FLOAT32 = Precision("float32", "the default where no faster format is known")


def exact(device_type: str):
    """A region that computes in float32 even inside autocast (a head's label scores)."""
    return torch.autocast(device_type, enabled=False)


def check_dtype(name: str) -> None:
    if name not in DTYPES:
        raise UserError(f"unknown --dtype '{name}' (choose one of {', '.join(DTYPES)})")


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """The format for `--dtype NAME` on `device`; `auto` decides from the hardware."""
    check_dtype(name)
    device = torch.device(device)
    if name != "auto":
        if name == "float16" and device.type == "cpu":
            log.warning("--dtype float16 on a CPU: most CPUs emulate float16 arithmetic, which is slow")
        return Precision(name, "asked for with --dtype")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", f"auto: CUDA device {torch.cuda.get_device_name(device)} computes bfloat16")
        return Precision("float32", "auto: this CUDA device has no fast bfloat16")
    if device.type == "cpu":
        native = cpu_bfloat16_features()
        if native:
            return Precision("bfloat16", f"auto: the CPU computes bfloat16 natively ({', '.join(native)})")
        return Precision("float32", "auto: the CPU has no native bfloat16 (no AMX or AVX512-BF16), emulating it would be slower")
    return Precision("float32", f"auto: no bfloat16 rule for device type {device.type}")


def cpu_bfloat16_features() -> list[str]:
    """The CPU's native bfloat16 features (AMX-BF16, AVX512-BF16): torch's capability report, else
    the kernel's /proc/cpuinfo flags. Empty where bfloat16 would be emulated."""
    flags = cpu_flags()
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def cpu_flags() -> set[str]:
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8
    if capabilities is not None:
        try:
            return {name for name, value in capabilities().items() if value is True}
        except RuntimeError:  # an unknown CPU: fall back to the kernel's view
            pass
    return proc_cpuinfo_flags()


def proc_cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = path.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_summary() -> dict:
    """What the benchmark records about the CPU: model name, native bfloat16 features, torch's view."""
    import platform

    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()
    name = capabilities.get("cpu_name") or platform.processor() or platform.machine()
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return {
        "model": name,
        "bfloat16_features": cpu_bfloat16_features(),
        "amx_bf16": "amx_bf16" in cpu_flags(),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


# ---------------------------------------------------------------- attention while training on a CPU


def float32_attention_backward() -> None:
    """Route transformers' `sdpa` attention through `_sdpa_training_in_float32` (process-wide, once).

    The profile of a frozen-body training step on smollm2-135m (1 thread, AVX512-BF16) showed the
    bfloat16 flash-attention *backward* kernel of CPU torch taking 1.27 s of 4.9 s, against 0.27 s
    for the same kernel in float32, while the forward kernels cost the same in both formats. Attention
    is a small part of the model's arithmetic, so computing it in float32 where gradients flow
    through it on a CPU costs little and removes that kernel; everywhere else (inference, CUDA,
    float32 runs) attention runs exactly as before."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if getattr(ALL_ATTENTION_FUNCTIONS["sdpa"], "wraps_sdpa", False):
        return

    def _sdpa_training_in_float32(module, query, key, value, attention_mask, **kwargs):
        reduced = query.dtype in (torch.bfloat16, torch.float16)
        if not (reduced and query.device.type == "cpu" and torch.is_grad_enabled()):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):
            output, weights = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kwargs
            )
        return output.to(query.dtype), weights

    _sdpa_training_in_float32.wraps_sdpa = True
    ALL_ATTENTION_FUNCTIONS["sdpa"] = _sdpa_training_in_float32
