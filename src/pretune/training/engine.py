"""The training engine: Hugging Face accelerate under the trainer's loop, and the processes of one run.

A plain `pretune train` is one process. Under `accelerate launch -m pretune train ...` (or torchrun)
the launcher sets WORLD_SIZE/RANK and accelerate joins the processes into one group (gloo on CPUs,
NCCL on GPUs). How the model is spread over them is the accelerate config's choice, not pretune's:
DDP (a full copy each, gradients averaged) or FSDP (parameters, gradients and optimizer state
sharded). The user's command is otherwise the same. DeepSpeed is refused (`check_launch`).

How the work is split: every process draws the same global batch (`--batch-size` is global, so a
run's hyperparameters mean the same with any number of processes) and trains on its shard of it;
each shard's loss is weighted by its part of the batch, so the processes' average gradient (what
DDP computes) is the whole batch's. Dev evaluation is sharded and gathered, so every process makes
the same best-state and early-stopping decisions; only rank 0 writes the run folder.

The batches are drawn by the trainer (`BatchOrder`), not by a prepared DataLoader: their state goes
into pretune's checkpoints, which resume a run bit for bit, and the learning-rate schedule is not
prepared either (accelerate would step it once per process, a per-process batch's convention).

Sharded (FSDP2): the loop's copies of the weights and optimizer state are gathered whole, and a
stage's model leaves the engine a plain module with the trained weights on every process
(`sharding`), so what follows training (evaluation, the adapter, the next stage) is the same
as after a one-process stage.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from ..errors import UserError
from ..sharding import full_optimizer_state, full_tensors, sharded_like, unshard_for_good


class Processes:
    """One process, or this process's place in a group that a launcher started (see `processes`)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, backend: str | None = None,
                 cpu: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend = backend  # gloo (CPU) or nccl (GPUs); None for one process
        self.cpu = cpu  # a group of CPU processes (accelerate forms one only when asked to)

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

    # -- collectives (accelerate's): no-ops in a single process --------------------------------
    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every process."""
        if not self.is_distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def gather(self, value) -> list:
        """Every process's value, in rank order, on every process."""
        if not self.is_distributed:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def mean(self, value: float) -> float:
        if not self.is_distributed:
            return value
        return sum(self.gather(value)) / self.world_size

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


def check_launch() -> None:
    """Refuse, before any model loads, a launch whose engine pretune cannot read back. Under DeepSpeed
    ZeRO the parameters (stage 3) and the optimizer state (stages 1-2) are partitioned in DeepSpeed's
    own layout, which the best-state copies, checkpoints and the adapter would read as if whole: the
    run would finish with wrong weights and no error."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise UserError("DeepSpeed is not supported: shard with FSDP (examples/accelerate/fsdp.yaml) "
                        "or train data-parallel (examples/accelerate/ddp.yaml)")


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
    return Processes(state.process_index, state.num_processes, state.local_process_index, state.backend, cpu)


class Engine:
    """One `accelerate.Accelerator` for a trainer: it prepares each stage's model and optimizer for the
    launch's setup (plain, DDP, FSDP), accumulates gradients over micro-batches (syncing
    them only at the last), runs backward and clipping, and carries the `--report-to` trackers.

    Devices stay pretune's (`--device`, one GPU per process of a group): accelerate places nothing."""

    def __init__(self, grad_accum: int, log_with: str | None = None, project_dir: Path | None = None):
        from accelerate import Accelerator
        from accelerate.utils import (
            DistributedDataParallelKwargs,
            DistributedType,
            GradientAccumulationPlugin,
        )

        check_launch()
        group = processes()  # joins the group first, with the CPU choice made there
        self.grad_accum = grad_accum
        self.accelerator = Accelerator(
            cpu=group.cpu,
            device_placement=False,
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
            # A stage need not reach every trainable parameter in every micro-batch (a path a batch
            # did not take); DDP must then look for them rather than wait for their gradients.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            log_with=log_with,
            project_dir=project_dir,
        )
        if self.accelerator.distributed_type == DistributedType.FSDP and not self.accelerator.is_fsdp2:
            raise UserError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config"
                            " (examples/accelerate/fsdp.yaml)")

    def prepare(self, method: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(model, optimizer) for one stage: the model to call in training (the method itself in one
        process, its DDP/FSDP wrapper in a group) and the optimizer to step."""
        accelerator = self.accelerator
        # The accumulation state is accelerate's process-wide one: start each stage at a step boundary.
        accelerator.gradient_accumulation_steps = self.grad_accum
        accelerator.step = 0
        accelerator.sync_gradients = True
        return accelerator.prepare(method, optimizer)

    @contextmanager
    def micro_batch(self, model):
        """One micro-batch's forward and backward: gradients are exchanged only at a step's last one."""
        with self.accelerator.accumulate(model):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of `loss / grad_accum` (the step's mean over its micro-batches)."""
        self.accelerator.backward(loss)

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradients' global norm (sharded gradients included); the norm before clipping."""
        if self.sharded:
            # torch clips sharded gradients itself (one mesh: all of a stage's units share it); accelerate's
            # FSDP2 branch compares `params` with the model's parameters element by element, which fails
            # for DTensors in another order (the optimizer's roles) and skips a frozen body's.
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm).full_tensor())
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    # -- whole weights and optimizer state, sharded or not (a collective when sharded) --------------
    @property
    def sharded(self) -> bool:
        """Whether the launch's accelerate config spreads a stage's parameters over the processes (FSDP)."""
        return self.accelerator.is_fsdp2

    def trainable_state(self, method: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The method's trainable weights, whole (gathered from the processes' slices when sharded)."""
        return full_tensors(method.trainable_state_dict())

    def optimizer_state(self, optimizer) -> dict:
        """The prepared optimizer's state as one process would hold it (moments gathered whole when sharded)."""
        return full_optimizer_state(optimizer.state_dict())

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        """Load an `optimizer_state` into the prepared optimizer (each process keeps its slices when sharded)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.load_state_dict(sharded_like(state, params) if self.sharded else state)

    def release(self, method: torch.nn.Module) -> None:
        """End a stage: a sharded method becomes a plain one again with its trained weights whole on every
        process; accelerate's references to the stage's model and optimizer are dropped (the optimizer's
        state; in a group, the wrapper whose hooks sit on a body the next stage shares)."""
        accelerator = self.accelerator
        if self.sharded:
            unshard_for_good(method)
        if processes().is_distributed:
            accelerator.free_memory()  # and a garbage collection: the wrapper must be gone, hooks and all
            return
        # One process wraps nothing: dropping the references is enough. free_memory() would also run a
        # full garbage collection, about half a second per stage with transformers loaded.
        accelerator._models, accelerator._optimizers, accelerator._schedulers, accelerator._dataloaders = [], [], [], []
