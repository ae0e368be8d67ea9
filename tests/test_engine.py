"""The training engine: the schedules' rates, the history written as training goes, the trackers,
and accelerate's part (one process: the method itself, gradient accumulation; several: see
test_distributed.py, and test_sharded.py for FSDP)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import Killed, _tiny, kill_after_checkpoint, sentiment_task
from pretune.api import RunConfig, resume_run, train_run
from pretune.cli import build_parser, main, run_config_from_args
from pretune.errors import UserError
from pretune.methods import HeadConfig, HeadMethod
from pretune.training import engine
from pretune.training.checkpoint import Checkpointer
from pretune.training.engine import Engine, Processes
from pretune.training.schedule import learning_rate_schedule
from pretune.training.trainer import TrainConfig, Trainer, set_seed
from pretune.tuning import BodyTraining

# 10 steps, warmup ratio 0.2: w = 2 warmup steps at 1/3 and 2/3 of the rate, then the schedule proper.
TOTAL, WARMUP, RATE = 10, 2, 0.3
EXPECTED = {
    "linear": [1 / 3, 2 / 3] + [(TOTAL - k) / (TOTAL - WARMUP) for k in range(2, TOTAL)],
    "cosine": [1 / 3, 2 / 3] + [(1 + math.cos(math.pi * (k - WARMUP) / (TOTAL - WARMUP))) / 2 for k in range(2, TOTAL)],
    "constant": [1 / 3, 2 / 3] + [1.0] * (TOTAL - 2),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_schedule_gives_the_hand_computed_rate_at_every_step(name):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=RATE)
    scheduler = learning_rate_schedule(name, optimizer, WARMUP, TOTAL)
    rates = []
    for _ in range(TOTAL):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([RATE * factor for factor in EXPECTED[name]], rel=1e-12)
    assert EXPECTED["cosine"][2] == 1.0 and EXPECTED["cosine"][6] == pytest.approx(0.5)  # the table is what it says


def test_an_unknown_schedule_is_refused_naming_the_known_ones():
    """A programming error (the CLI refuses the name first), but its message still names the choices."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=RATE)
    with pytest.raises(ValueError) as refused:
        learning_rate_schedule("step", optimizer, WARMUP, TOTAL)
    assert str(refused.value) == "unknown schedule 'step'; one of linear, cosine, constant"


class RecordingAdamW(torch.optim.AdamW):
    rates: list[float] = []

    def step(self, closure=None):
        RecordingAdamW.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


def linear_head(tiny_encoder, task):
    set_seed(42)
    return HeadMethod(tiny_encoder, task, HeadConfig(dropout=0.0), BodyTraining.parse("frozen"))


@pytest.mark.parametrize("name", ["cosine", "constant"])
def test_the_trainer_steps_at_the_chosen_schedule(tiny_encoder, task, monkeypatch, name):
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    RecordingAdamW.rates = []
    method = linear_head(tiny_encoder, task)
    items = method.featurize(task.train, progress=False)
    config = TrainConfig(steps=TOTAL, batch_size=4, lr=RATE, warmup_ratio=0.2, lr_scheduler=name)
    Trainer(config, progress=False, log=None).fit(method, items, task.targets(task.train))
    assert RecordingAdamW.rates == pytest.approx([RATE * factor for factor in EXPECTED[name]], rel=1e-12)


def test_options_and_their_trainer_names_reach_the_configuration():
    for argv in (["--lr-scheduler", "cosine", "--report-to", "tensorboard"],
                 ["--lr_scheduler_type", "cosine", "--report_to", "tensorboard"]):
        args = build_parser().parse_args(["train", "--task", "t", "--out", "o", *argv])
        training = run_config_from_args(args).training
        assert (training.lr_scheduler, training.report_to) == ("cosine", "tensorboard")
    defaults = run_config_from_args(build_parser().parse_args(["train", "--task", "t", "--out", "o"])).training
    assert (defaults.lr_scheduler, defaults.report_to) == ("linear", "none")


def test_bad_schedule_and_tracker_names_are_one_line(capsys, tmp_path):
    with pytest.raises(UserError, match="--lr-scheduler 'step'"):
        TrainConfig(lr_scheduler="step").validate()
    with pytest.raises(UserError, match="--report-to 'paper'"):
        TrainConfig(report_to="paper").validate()
    code = main(["train", "--task", "t", "--out", str(tmp_path / "o"), "--lr-scheduler", "step"])
    assert code == 2 and not (tmp_path / "o").exists()
    assert "--lr-scheduler" in capsys.readouterr().err


def test_a_tracker_not_installed_is_refused_before_the_run_folder(tmp_path, task_folder, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    code = main(["train", "--task", str(task_folder), "--model", "bert-tiny", "--out", str(out), "--report-to",
                 "tensorboard", "--quiet"])
    _, err = capsys.readouterr()
    assert code == 2 and not out.exists()
    assert err.strip().splitlines() == [
        "pretune: error: --report-to tensorboard: the tensorboard package is not installed (pip install 'pretune[track]')"
    ]


def test_trackers_need_a_run_folder():
    with pytest.raises(UserError, match="give --out"):
        Trainer(TrainConfig(report_to="tensorboard"), progress=False, log=None)


def test_one_process_trains_the_method_itself(tiny_encoder, task):
    """accelerate in one process wraps nothing: the model called in training is the method, and the
    optimizer steps the very parameters the method holds."""
    method = linear_head(tiny_encoder, task)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad])
    model, prepared = Engine(grad_accum=2).prepare(method, optimizer)
    assert model is method and prepared.optimizer is optimizer




def test_a_stage_starts_at_a_step_boundary_with_no_gradient_left_from_the_last(tiny_encoder, task):
    """accelerate's accumulation state is process-wide, and its optimizer zeroes gradients only at a step
    boundary: a stage started mid-step would add the gradients the last stage left (a PET ensemble's
    members share the body) to its first step, and exchange them at the wrong micro-batch."""
    engine = Engine(grad_accum=2)
    method = linear_head(tiny_encoder, task)
    params = [p for p in method.parameters() if p.requires_grad]
    model, optimizer = engine.prepare(method, torch.optim.AdamW(params))
    with engine.micro_batch(model):  # the first micro-batch of 2: the stage ends mid-step
        pass
    assert not engine.accelerator.sync_gradients
    for param in params:
        param.grad = torch.ones_like(param)
    engine.release(method)

    model, optimizer = engine.prepare(method, torch.optim.AdamW(params))
    optimizer.zero_grad(set_to_none=True)
    assert all(param.grad is None for param in params)
    synced = []
    for _ in range(4):
        with engine.micro_batch(model):
            synced.append(engine.accelerator.sync_gradients)
    assert synced == [False, True, False, True]  # gradients exchanged at each step's last micro-batch

class RecordedAccelerator:
    """accelerate's Accelerator as Engine builds it: records its arguments, forms no process state."""

    arguments: dict = {}

    def __init__(self, **arguments):
        from accelerate.utils import DistributedType

        RecordedAccelerator.arguments = arguments
        self.distributed_type, self.is_fsdp2 = DistributedType.NO, False


@pytest.mark.parametrize(
    ("group", "cpu"),
    [(Processes(), False), (Processes(0, 2, 0, "gloo", cpu=True), True), (Processes(0, 2, 0, "nccl"), False)],
    ids=["one process", "CPU group", "GPU group"],
)
def test_accelerate_is_told_whether_the_processes_train_on_cpus(monkeypatch, group, cpu):
    """One process leaves the device to accelerate (a GPU where there is one: forcing the CPU would
    put accelerate's device, and its mixed-precision handling, on the CPU under a GPU run); a group
    passes on the choice it was formed with."""
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", RecordedAccelerator)
    monkeypatch.setattr(engine, "processes", lambda: group)
    Engine(grad_accum=3)
    assert RecordedAccelerator.arguments["cpu"] is cpu
    assert RecordedAccelerator.arguments["device_placement"] is False  # pretune places the model itself
    assert RecordedAccelerator.arguments["gradient_accumulation_plugin"].num_steps == 3
    # DDP must not wait for gradients of parameters a micro-batch did not reach (a path it did not take)
    (ddp,) = RecordedAccelerator.arguments["kwargs_handlers"]
    assert ddp.find_unused_parameters is True

# ---------------------------------------------------------------- history.jsonl and trackers


def tiny_run_config(folder: Path, **training) -> RunConfig:
    task = folder / "task"
    task.mkdir(parents=True)
    data = sentiment_task()
    for split in ("train", "dev", "test"):
        rows = [{"text": e.text, "label": e.label} for e in getattr(data, split)]
        (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"steps": 8, "batch_size": 4, "eval_every": 4, "checkpoint_every": 1, "lr": 3e-2, "seed": 5, **training}
    return RunConfig(task=str(task), model="tiny", method="head", train="last:1", training=TrainConfig(**options))


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_history_is_written_as_training_goes_and_resume_continues_it(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train_run(tiny_run_config(tmp_path / "a"), straight, progress=False, backbone=_tiny("mlm", "bert-tiny"))
    rows = history(straight)
    steps = [row for row in rows if row["kind"] == "step"]
    assert [row["step"] for row in steps] == list(range(1, 9))
    assert all(set(row["lr"]) == {"head", "body", "no_decay"} and math.isfinite(row["loss"]) for row in steps)
    metrics = json.loads((straight / "metrics.json").read_text())
    evaluations = [{k: v for k, v in row.items() if k not in ("kind", "phase")} for row in rows if row["kind"] == "evaluation"]
    assert evaluations == metrics["train"]["history"]  # the rows metrics.json ends with, written on the way

    kill_after_checkpoint(monkeypatch, 5)
    victim = tmp_path / "victim"
    with pytest.raises(Killed):
        train_run(tiny_run_config(tmp_path / "b"), victim, progress=False, backbone=_tiny("mlm", "bert-tiny"))
    done = history(victim)
    assert [row["step"] for row in done if row["kind"] == "step"] == [1, 2, 3, 4, 5]  # the steps done, on disk
    assert done == rows[: len(done)]
    monkeypatch.undo()
    with open(victim / "history.jsonl", "a") as file:
        file.write('{"kind": "step", "pha')  # a kill in the middle of a line, and a step past the checkpoint
    resume_run(victim, progress=False, backbone=_tiny("mlm", "bert-tiny"))
    assert history(victim) == rows  # each step once, the torn line gone


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (pip install 'pretune[track]')")
def test_report_to_tensorboard_writes_event_files(tmp_path):
    run = tmp_path / "run"
    train_run(tiny_run_config(tmp_path / "a", steps=4, eval_every=2, report_to="tensorboard"), run, progress=False,
              backbone=_tiny("mlm", "bert-tiny"))
    events = sorted((run / "tracking").rglob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run / "tracking" / run.name)).Reload()  # the run's own folder (hparams aside)
    assert [event.step for event in scalars.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [event.step for event in scalars.Scalars("dev/accuracy")] == [2, 4]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_a_checkpoint_from_before_the_schedule_option_resumes_as_linear(tmp_path):
    """Checkpoints written before --lr-scheduler existed hold no such option: they ran the linear schedule."""
    checkpoints = Checkpointer(tmp_path, write=False)
    written = TrainConfig(steps=5).to_dict()
    for name in ("device", "checkpoint_every", "report_to", "lr_scheduler"):
        written.pop(name)
    checkpoints.config = written
    Trainer(TrainConfig(steps=5), progress=False, log=None, checkpoints=checkpoints)  # accepted
    with pytest.raises(UserError, match="other training options"):
        Trainer(TrainConfig(steps=5, lr_scheduler="cosine"), progress=False, log=None, checkpoints=checkpoints)
