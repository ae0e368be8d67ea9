"""Data-parallel training: the processes that train one run together.

A plain `pretune train` is one process. Under `torchrun --nproc-per-node N -m pretune train ...`
or `accelerate launch --multi_gpu --num_processes N -m pretune train ...` the launcher sets
WORLD_SIZE/RANK, and Hugging Face accelerate's `PartialState` joins the processes into one group
(gloo on CPU, NCCL on GPUs) and picks each process's device. The user's command is otherwise
the same.

How the work is split: every process draws the same global batch (`--batch-size` is global, so a
run's hyperparameters mean the same with any number of processes), trains on its shard of it,
and the gradients are averaged with one all-reduce per optimizer step. This is what PyTorch's
DistributedDataParallel does, done explicitly: DDP's reducer assumes every trainable parameter is
reached inside `forward`, while methods here compute losses outside it (PET's auxiliary LM loss),
freeze most of the body and swap ensemble members between phases. Dev evaluation is sharded and
gathered, so every process makes the same best-state and early-stopping decisions; only rank 0
writes the run folder, the others wait for it.
"""

from __future__ import annotations

import os
from functools import cache

import torch

from ..errors import UserError


class Processes:
    """One process, or this process's place in a group launched by torchrun / accelerate."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, backend: str | None = None):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend = backend  # gloo (CPU) or nccl (GPUs); None for one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def device(self, resolved: torch.device) -> torch.device:
        """Each process of a multi-GPU group on its own GPU."""
        if self.backend == "nccl" and resolved.type == "cpu":
            raise UserError("--device cpu: these processes formed a GPU group; set ACCELERATE_USE_CPU=1 to train on CPUs")
        if self.is_distributed and resolved.type == "cuda" and resolved.index is None:
            return torch.device("cuda", self.local_rank)
        return resolved

    def shard(self, indices: list[int]) -> list[int]:
        """This process's part of a global batch (every world_size-th example)."""
        return indices[self.rank :: self.world_size]

    # -- collectives: no-ops in a single process ---------------------------------------------
    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every process."""
        if not self.is_distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's value, in rank order, on every process."""
        if not self.is_distributed:
            return [value]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def mean(self, value: float) -> float:
        if not self.is_distributed:
            return value
        return sum(self.gather(value)) / self.world_size

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients over the processes, one all-reduce per device and dtype. A parameter
        without a gradient here (an empty shard, a path this batch did not take) counts as zeros,
        so every process reduces the same tensors."""
        if not self.is_distributed:
            return
        groups: dict = {}
        for param in params:
            groups.setdefault((param.device, param.dtype), []).append(param)
        for group in groups.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for param in group:
                size = param.numel()
                param.grad = flat[offset : offset + size].view_as(param).clone()
                offset += size

    def sync_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Start every process from rank 0's weights (a new head's random start included)."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            for param in params:
                torch.distributed.broadcast(param.data, src=0)

    def on_main(self, action):
        """Run `action` on rank 0 only (e.g. create the run folder); a UserError there is raised on
        every process, so none of them waits forever for the others."""
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except UserError as caught:
                error = str(caught)
        error = self.broadcast(error)
        if error is not None:
            raise UserError(error)
        return result


@cache
def processes() -> Processes:
    """This process's place in the group, joining the group on first use when a launcher started it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        return Processes()
    from accelerate import PartialState

    # accelerate forms a CPU group (gloo) only when asked to: without a GPU, or with `launch --cpu`.
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu)  # reads the launcher's environment: rank, world size, address
    if state.num_processes != world_size:
        raise UserError(f"launched as {world_size} processes, but they could not form one group ({state.distributed_type})")
    return Processes(state.process_index, state.num_processes, state.local_process_index, state.backend)
