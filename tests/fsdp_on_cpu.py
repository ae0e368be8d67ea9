"""The `pretune` command with accelerate's FSDP config honoured on CPUs (a test's entry point).

    accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_on_cpu.py train ...

accelerate (1.15) forms a group of CPU processes as MULTI_CPU and then ignores the FSDP config: the
launch silently trains data-parallel (DDP). torch's FSDP2 itself shards over gloo, so this entry point
lets accelerate choose FSDP for the CPU group as it would for GPUs, and the sharded code paths of
pretune run on a machine without one. Each process reports on stderr how many of the parameters it
trains are sharded (DTensors), so a test can tell that the run was really sharded.
"""

import sys

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from pretune.cli import main
from pretune.sharding import is_sharded
from pretune.training.engine import Engine

SHARDED_REPORT = "fsdp_on_cpu: rank {rank} trains {sharded} of {total} parameters sharded"


def honour_fsdp_on_cpu() -> None:
    """Where accelerate was given an FSDP plugin but formed a CPU group, make the group FSDP."""
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def report_sharded_parameters() -> None:
    """After each stage is prepared: how many of the parameters the optimizer steps are sharded."""
    original = Engine.prepare

    def prepare(self, method, optimizer):
        model, prepared = original(self, method, optimizer)
        params = [p for group in prepared.param_groups for p in group["params"]]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        print(SHARDED_REPORT.format(rank=rank, sharded=sum(map(is_sharded, params)), total=len(params)), file=sys.stderr)
        return model, prepared

    Engine.prepare = prepare


if __name__ == "__main__":
    honour_fsdp_on_cpu()
    report_sharded_parameters()
    sys.exit(main(sys.argv[1:]))
