"""Data-parallel training: the same command under torchrun, 2 CPU processes (gloo), DDP through accelerate."""

import json
import subprocess
import sys

import pytest
import torch

from pretune.errors import UserError
from pretune.training.engine import Processes
from pretune.training.trainer import TrainConfig, Trainer


def test_each_process_takes_every_nth_example_of_a_batch():
    batch = [7, 3, 5, 1, 0]
    shards = [Processes(rank, 2).shard(batch) for rank in range(2)]
    assert shards == [[7, 5, 0], [3, 1]]
    assert Processes().shard(batch) == batch and Processes().is_main and not Processes().is_distributed



def test_each_process_of_a_gpu_group_trains_on_its_own_gpu_and_never_on_the_cpu():
    cuda = torch.device("cuda")
    assert Processes(1, 2, 1, "nccl").device(cuda) == torch.device("cuda", 1)  # --device cuda: the local GPU
    assert Processes(1, 2, 1, "nccl").device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # named: kept
    assert Processes().device(cuda) == cuda  # one process: the device as given
    cpu = torch.device("cpu")
    assert Processes(1, 2, 1, "gloo", cpu=True).device(cpu) == cpu  # a CPU group trains on CPUs
    with pytest.raises(UserError, match="these processes formed a GPU group; set ACCELERATE_USE_CPU=1"):
        Processes(0, 2, 0, "nccl").device(cpu)


class Collective:
    """accelerate's gather_object as a group of 2 runs it, seen from rank 0: every process passes a
    list, and each gets the lists concatenated in rank order (here rank 1 passes `from_rank_1`)."""

    def __init__(self, from_rank_1):
        self.from_rank_1, self.calls = from_rank_1, 0

    def __call__(self, mine: list) -> list:
        self.calls += 1
        return [*mine, *self.from_rank_1]


def test_gather_returns_every_process_value_in_rank_order_and_one_process_its_own(monkeypatch):
    import accelerate.utils

    collective = Collective(from_rank_1=[{"accuracy": 0.25}])
    monkeypatch.setattr(accelerate.utils, "gather_object", collective)
    assert Processes(0, 2).gather({"accuracy": 0.75}) == [{"accuracy": 0.75}, {"accuracy": 0.25}]
    assert Processes().gather({"accuracy": 0.75}) == [{"accuracy": 0.75}]
    assert collective.calls == 1  # one process exchanges nothing
    monkeypatch.setattr(accelerate.utils, "gather_object", Collective(from_rank_1=[0.25]))
    assert Processes(0, 2).mean(0.75) == pytest.approx(0.5)  # the step loss every process logs


class Broadcast:
    """accelerate's broadcast_object_list as a group of 2 runs it: the list each process passes comes
    back holding what process `from_process` passed (`passed`: rank -> its list)."""

    def __init__(self, passed):
        self.passed = passed

    def __call__(self, object_list: list, from_process: int = 0) -> list:
        object_list[:] = self.passed[from_process]
        return object_list


def test_broadcast_gives_every_process_rank_0s_value(monkeypatch):
    import accelerate.utils

    error = "out/ exists and is not a pretune run folder"
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", Broadcast({0: [error], 1: [None]}))
    assert Processes(1, 2).broadcast(None) == error  # rank 1 learns rank 0's refusal
    assert Processes().broadcast("mine") == "mine"  # one process: its own value, no exchange

class RankZeroOfTwo(Processes):
    """Rank 0 of a group of 2, in one process: `gather` returns its own value and the one rank 1 sends."""

    def __init__(self, from_rank_1):
        super().__init__(rank=0, world_size=2)
        self.from_rank_1 = from_rank_1

    def gather(self, value) -> list:
        return [value, self.from_rank_1]


class ScriptedScores:
    """A method whose items are its label scores, scored in batches as a method does; records the batches."""

    def __init__(self, task):
        self.task, self.batches = task, []

    def score_items(self, items, batch_size=32, progress=False, desc="scoring"):
        for start in range(0, len(items), batch_size):
            self.batches.append(len(items[start : start + batch_size]))
        return torch.tensor(items, dtype=torch.float32)


def test_two_processes_score_dev_in_shards_and_both_see_the_metrics_of_the_whole_of_it(task):
    """Five dev examples over two processes: rank 0 scores examples 0, 2, 4 and rank 1 examples 1, 3;
    the gathered scores, put back in order, must give rank 0 the metrics of the whole dev set."""
    right_0, right_1 = [2.0, -1.0], [-1.0, 2.0]
    targets = [0, 1, 1, 0, 1]
    items = [right_0, right_1, right_1, right_1, right_0]  # wrong on examples 3 and 4: accuracy 3/5
    trainer = Trainer(TrainConfig(steps=1, eval_batch_size=2), progress=False, log=None)
    trainer.method = ScriptedScores(task)
    alone = trainer._evaluate(items, targets)
    assert trainer.method.batches == [2, 2, 1]  # all five, in batches of --eval-batch-size
    trainer.method = ScriptedScores(task)
    trainer.processes = RankZeroOfTwo(from_rank_1=torch.tensor([items[1], items[3]]))
    sharded = trainer._evaluate(items, targets)
    assert alone["accuracy"] == pytest.approx(0.6)
    assert sharded == alone
    assert trainer.method.batches == [2, 1]  # its own shard only, in batches of --eval-batch-size


@pytest.mark.slow
def test_two_processes_train_like_one_and_only_rank_0_writes(tmp_path, task_folder):
    # Batches of 3 split 2 + 1 over the processes, and the last batch of each epoch holds 2 examples:
    # the loss weighting must still make the two processes' step the one process's step.
    options = [
        "--task", task_folder, "--model", "bert-tiny", "--method", "head", "--dropout", "0", "--steps", "24",
        "--batch-size", "3", "--eval-every", "8", "--lr", "0.05", "--device", "cpu", "--quiet",
    ]
    work = tmp_path / "work"
    work.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.Popen(
        [*launcher, "-m", "pretune", "train", *map(str, options), "--out", "two"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    one = subprocess.run(
        [sys.executable, "-m", "pretune", "train", *map(str, options), "--out", "one"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    out, errors = two.communicate(timeout=300)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, errors

    assert sorted(p.name for p in work.iterdir()) == ["one", "two"]  # nothing written elsewhere
    files = sorted(p.name for p in (work / "one").iterdir())
    assert sorted(p.name for p in (work / "two").iterdir()) == files  # no second set, no leftovers
    assert json.loads((work / "two" / "run.json").read_text())["status"] == "complete"
    log = (work / "two" / "train.log").read_text()
    assert [line.split()[3] for line in log.splitlines() if " step " in line] == ["8", "16", "24"]  # logged once
    assert out.count("run folder") == 1  # one summary, from rank 0

    single = json.loads((work / "one" / "metrics.json").read_text())
    double = json.loads((work / "two" / "metrics.json").read_text())
    for split in ("dev", "test"):
        assert double[split]["accuracy"] == single[split]["accuracy"] == 1.0
    for a, b in zip(single["train"]["history"], double["train"]["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)  # the same steps, summed in another order
    # history.jsonl written once (by rank 0), step by step, with the losses of the single process
    steps = [[json.loads(line) for line in (work / run / "history.jsonl").read_text().splitlines()] for run in ("one", "two")]
    assert [row["step"] for row in steps[1] if row["kind"] == "step"] == list(range(1, 25))
    assert [row["loss"] for row in steps[1]] == pytest.approx([row["loss"] for row in steps[0]], rel=1e-4)
