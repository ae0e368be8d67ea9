"""Sharded training (FSDP2): full weights from parameters that are spread over the processes.

Under an FSDP config, accelerate shards a stage's model in place (`torch.distributed.fsdp.fully_shard`):
each parameter becomes a DTensor of which every process holds a slice, and forward hooks gather the
slices for each call. Everything else in pretune (dev scores, best-state copies, checkpoints, the
evaluation and adapter that rank 0 writes alone, the next stage of a recipe) wants full tensors. So
the engine gathers them where the loop needs a copy (`full_tensors`, a collective: every process
calls it) and, when a stage ends, turns the model back into a plain module holding the trained
weights (`unshard_for_good`); after that a sharded stage looks to the rest of the run like one that
ran in a single process. Methods take from here the layers FSDP may shard one by one
(`shard_unit_classes`) and the grad mode to score in (`without_autograd`).

FSDP2 has no public way back: `unshard_for_good` undoes what `fully_shard` did (its hooks, its
registration, its class swap), so it follows torch's private names, checked against torch 2.13.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn


def is_sharded(tensor) -> bool:
    if not torch.distributed.is_available():  # a build without torch.distributed shards nothing
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def without_autograd(model: nn.Module):
    """The context to score in: inference mode, or `no_grad` for a sharded model. FSDP2 makes the
    tensors its gathered parameters live in once, at the first forward pass; made in inference mode,
    they could never take part in training afterwards (a step-0 dev evaluation comes first)."""
    return torch.no_grad() if any(is_sharded(p) for p in model.parameters()) else torch.inference_mode()


def full_tensors(state: dict) -> dict:
    """`state` with every sharded tensor gathered whole into CPU memory (on every process, one tensor
    at a time, so a device never holds more than one full tensor at once); other values as they are."""
    return {name: value.full_tensor().cpu() if is_sharded(value) else value for name, value in state.items()}


def full_optimizer_state(state: dict) -> dict:
    """`Optimizer.state_dict()` with each parameter's moments gathered whole (see `full_tensors`)."""
    return {**state, "state": {index: full_tensors(moments) for index, moments in state["state"].items()}}


def sharded_like(state: dict, params: list) -> dict:
    """An optimizer state (`Optimizer.state_dict()` with full tensors, as a checkpoint holds it) cut into
    the slices of the sharded parameters it belongs to, so a resumed sharded run steps on from it."""
    from torch.distributed.tensor import distribute_tensor

    def slices(param, moments: dict) -> dict:
        if not is_sharded(param):
            return moments
        # Every process holds the full state: each cuts its own slice, nothing is sent.
        return {key: distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
                if torch.is_tensor(value) and value.shape == param.shape else value for key, value in moments.items()}

    return {**state, "state": {index: slices(params[index], moments) for index, moments in state["state"].items()}}


def shard_unit_classes(body: nn.Module) -> list[str]:
    """The body's layer classes (transformers' `_no_split_modules`) that can each be a shard unit: those
    whose every instance holds all the users of its parameters. A parameter shared with a module outside
    (input embeddings tied to a language-modelling head) must stay in the unit of the model around both:
    FSDP2 refuses a parameter in two units."""
    names = set(getattr(body, "_no_split_modules", None) or ())
    holders: dict[int, list[nn.Module]] = {}  # each parameter's modules (a tied one has several)
    for module in body.modules():
        for param in module._parameters.values():
            if param is not None:
                holders.setdefault(id(param), []).append(module)

    def self_contained(layer: nn.Module) -> bool:
        inside = {id(module) for module in layer.modules()}
        return all(id(holder) in inside for param in layer.parameters() for holder in holders[id(param)])

    refused = {type(m).__name__ for m in body.modules() if type(m).__name__ in names and not self_contained(m)}
    return sorted(names - refused)


def unshard_for_good(model: nn.Module) -> None:
    """Gather the full weights of a model `fully_shard` was applied to (and of its sharded submodules)
    into plain parameters on every process, and take FSDP off it. A collective: every process calls it."""
    from torch.distributed.fsdp import FSDPModule

    fsdp_modules = [module for module in model.modules() if isinstance(module, FSDPModule)]
    if not fsdp_modules:
        return
    for module in fsdp_modules:
        module.reshard()  # every parameter back to its registered slice
    _gather_parameters(model)
    for module in fsdp_modules:
        _remove_fully_shard(module)
    for module in model.modules():
        for marker in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            module.__dict__.pop(marker, None)


def _gather_parameters(model: nn.Module) -> None:
    """Each sharded parameter replaced by a plain one with its full value; a parameter two modules
    share (tied embeddings) stays shared."""
    whole: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if not is_sharded(param):
                    continue
                if id(param) not in whole:
                    whole[id(param)] = nn.Parameter(param.full_tensor(), requires_grad=param.requires_grad)
                module._parameters[name] = whole[id(param)]


def _remove_fully_shard(module: nn.Module) -> None:
    """Undo `fully_shard` on one module: its forward hooks, its registration as a composable API
    (so a later stage may shard it again) and the FSDP class it was given."""
    from torch.distributed.fsdp import FSDPModule

    contract = importlib.import_module("torch.distributed._composable.contract")
    composable_state = importlib.import_module("torch.distributed._composable_state")
    state = module._get_fsdp_state()
    state._pre_forward_hook_handle.remove()
    state._post_forward_hook_handle.remove()
    states = module.__dict__.get(contract.STATE_KEY, {})
    for key in [key for key in states if getattr(key, "__name__", None) == "fully_shard"]:
        del states[key]
    module.__dict__.get(contract.REGISTRY_KEY, {}).pop("fully_shard", None)
    composable_state._module_state_mapping.pop(module, None)
    module.__class__ = next(base for base in type(module).__bases__ if base is not FSDPModule)
