"""Checkpoints and resume: a run interrupted at any step and resumed ends exactly like one that
never stopped; checkpoints are replaced atomically; a diverging run keeps its last good checkpoint."""

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import _tiny, sentiment_task
from pretune.api import RunConfig, resume_run, train_run
from pretune.errors import UserError
from pretune.runs import atomic_write_text, load_weights
from pretune.storage import weights_bytes
from pretune.training import checkpoint as checkpoint_module
from pretune.training.checkpoint import Checkpointer, checkpoint_step
from pretune.training.trainer import TrainConfig
from run_folders import assert_same_run


class Crash(Exception):
    """Stands in for a kill: raised right after a checkpoint was written."""


def crash_after(monkeypatch, phase: int, step: int) -> None:
    original = Checkpointer.save

    def save(self, snapshot, config):
        original(self, snapshot, config)
        if (snapshot.phase, snapshot.loop["step"]) == (phase, step):
            raise Crash(f"phase {phase} step {step}")

    monkeypatch.setattr(Checkpointer, "save", save)


def tiny_config(folder, method="head", train="last:1", **options) -> RunConfig:
    """The few-shot sentiment task on a tiny random BERT (dropout on: the RNG must resume too)."""
    task = folder / "task"
    if not task.exists():
        task.mkdir(parents=True)
        data = sentiment_task()
        for split in ("train", "dev", "test"):
            rows = [{"text": e.text, "label": e.label} for e in getattr(data, split)]
            (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = TrainConfig(steps=10, batch_size=3, eval_every=4, checkpoint_every=1, lr=3e-2, body_lr=1e-3, seed=5)
    return RunConfig(task=str(task), model="tiny", method=method, train=train, method_options=options, training=training)


def tiny_bert():
    return _tiny("mlm", "bert-tiny")


def assert_resumed_equals_straight(config: RunConfig, root, monkeypatch, step: int) -> None:
    """Train `config` whole (root/straight) and crashed after phase 0's checkpoint at `step`, then
    resumed (root/crashed): the two runs must be the same."""
    train_run(config, root / "straight", progress=False, backbone=tiny_bert())
    crash_after(monkeypatch, 0, step)
    with pytest.raises(Crash):
        train_run(config, root / "crashed", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    resume_run(root / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(root / "crashed", root / "straight")


@pytest.fixture(scope="module")
def straight_head(tmp_path_factory):
    """An uninterrupted run: what every resumed head run must equal."""
    folder = tmp_path_factory.mktemp("straight")
    train_run(tiny_config(folder), folder / "run", progress=False, backbone=tiny_bert())
    return folder / "run"


@pytest.mark.parametrize("crash_step", [1, 6])
def test_resumed_head_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, straight_head, crash_step):
    crash_after(monkeypatch, 0, crash_step)
    with pytest.raises(Crash):
        train_run(tiny_config(tmp_path), tmp_path / "crashed", progress=False, backbone=tiny_bert())
    status = json.loads((tmp_path / "crashed" / "run.json").read_text())
    assert status["status"] == "failed" and checkpoint_step(tmp_path / "crashed") == crash_step
    monkeypatch.undo()
    resume_run(tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(tmp_path / "crashed", straight_head)
    assert not (tmp_path / "crashed" / "checkpoint").exists()  # a complete run keeps its adapter, not the checkpoint
    assert json.loads((tmp_path / "crashed" / "run.json").read_text())["status"] == "complete"


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch, straight_head):
    def killed(self, *args):
        raise Crash("before any checkpoint")

    monkeypatch.setattr(Checkpointer, "save", killed)
    with pytest.raises(Crash):
        train_run(tiny_config(tmp_path), tmp_path / "crashed", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / "crashed") is None
    resume_run(tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(tmp_path / "crashed", straight_head)


def test_a_run_stopped_after_training_resumes_without_training_again(tmp_path, monkeypatch, straight_head):
    """Killed after the last step (while evaluating, say): the final checkpoint holds the trained
    weights, and the resumed run only evaluates and writes."""
    original = Checkpointer.finish_phase

    def finish_then_crash(self, *args):
        original(self, *args)
        raise Crash("after training")

    monkeypatch.setattr(Checkpointer, "finish_phase", finish_then_crash)
    with pytest.raises(Crash):
        train_run(tiny_config(tmp_path), tmp_path / "crashed", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    monkeypatch.setattr(Checkpointer, "save", lambda *args: pytest.fail("trained again"))
    resume_run(tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(tmp_path / "crashed", straight_head)


def test_resumed_pet_ensemble_skips_finished_phases_and_continues_the_current_one(tmp_path, monkeypatch):
    """PET with two patterns trains in two phases (one model per pattern): the first phase's
    result comes from its checkpoint, the second continues at its step."""
    patterns = ["{text} It was {mask}.", "{text} All in all, {mask}."]
    config = tiny_config(tmp_path, method="pet", train="bitfit", patterns=patterns, verbalizer="positive=good negative=bad")
    config.training.steps, config.training.eval_every = 6, 3
    config.training.lr = None  # PET adds no parameters of its own: --body-lr is its only rate
    train_run(config, tmp_path / "straight", progress=False, backbone=tiny_bert())
    crash_after(monkeypatch, 1, 4)
    with pytest.raises(Crash):
        train_run(config, tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert sorted(p.name for p in (tmp_path / "crashed" / "checkpoint").iterdir()) == [
        "phase-0.safetensors", "state.safetensors", "trainer.pt",
    ]
    monkeypatch.undo()
    resume_run(tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(tmp_path / "crashed", tmp_path / "straight")


def test_resumed_pet_with_learned_label_tokens_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """The learned label rows (and their optimizer state) are in the checkpoint like any trained weight."""
    config = tiny_config(tmp_path, method="pet", train="frozen", patterns=["{text} It was {mask}."],
                         verbalizer="positive=good negative=bad", label_tokens="learned")
    assert_resumed_equals_straight(config, tmp_path, monkeypatch, 5)
    assert set(load_weights(tmp_path / "straight" / "adapter.safetensors")) == {
        "verbalizer.label_rows.weight", "verbalizer.label_rows.bias"}


def test_a_kill_between_the_renames_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    """Replacing a checkpoint is two renames (old aside, new in): a kill between them leaves only
    `.checkpoint.old`, which a reader uses and the writer puts back; a half-written new checkpoint
    (`.checkpoint.partial`) is ignored and cleaned up."""
    config = tiny_config(tmp_path, train="frozen")
    crash_after(monkeypatch, 0, 3)
    with pytest.raises(Crash):
        train_run(config, tmp_path / "run", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    folder = tmp_path / "run" / "checkpoint"
    os.replace(folder, folder.with_name(".checkpoint.old"))  # the first rename happened, not the second
    (folder.with_name(".checkpoint.partial")).mkdir()
    (folder.with_name(".checkpoint.partial") / "trainer.pt").write_bytes(b"half a file")
    assert checkpoint_step(tmp_path / "run") is None  # a quick reader sees none while it is being replaced
    reader = Checkpointer(tmp_path / "run", write=False)
    assert reader.load() and reader.step == 3 and not folder.exists()  # a reader changes nothing
    writer = Checkpointer(tmp_path / "run")
    assert writer.load() and writer.step == 3
    assert folder.is_dir() and sorted(p.name for p in (tmp_path / "run").glob(".checkpoint*")) == []


def test_checkpoint_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A failure while the new checkpoint is written leaves the previous one as it was."""
    config = tiny_config(tmp_path, train="frozen")
    crash_after(monkeypatch, 0, 2)
    with pytest.raises(Crash):
        train_run(config, tmp_path / "run", progress=False, backbone=tiny_bert())
    before = (tmp_path / "run" / "checkpoint" / "trainer.pt").read_bytes()
    monkeypatch.undo()

    def disk_full(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(checkpoint_module, "save_weights", disk_full)
    checkpoints = Checkpointer(tmp_path / "run")
    checkpoints.load()
    with pytest.raises(OSError):
        checkpoints.finish_phase(0, {"w": torch.zeros(2)}, {"steps": 12}, {})
    assert (tmp_path / "run" / "checkpoint" / "trainer.pt").read_bytes() == before


def test_a_process_that_does_not_write_leaves_no_files(tmp_path):
    """Under data parallelism only rank 0 writes; the others keep track of the step only."""
    checkpoints = Checkpointer(tmp_path / "run", write=False)
    checkpoints.finish_phase(0, {"w": torch.zeros(2)}, {"steps": 4}, {})
    checkpoints.remove()
    assert checkpoints.step == 4 and not (tmp_path / "run").exists()


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, train="frozen")
    config.training.lr = 1e37  # the first update blows the head up: the second step's loss is not finite
    with pytest.raises(UserError) as caught:
        train_run(config, tmp_path / "run", progress=False, backbone=tiny_bert())
    message = str(caught.value)
    assert "training diverged" in message and "at step 2" in message and "checkpoint (step 1)" in message
    assert "\n" not in message
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert not (run / "metrics.json").exists() and not (run / "adapter.safetensors").exists()
    assert checkpoint_step(run) == 1
    state = load_weights(run / "checkpoint" / "state.safetensors")
    assert state and all(torch.isfinite(t).all() for t in state.values())


def test_resume_refuses_a_checkpoint_written_with_other_options(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, train="frozen")
    crash_after(monkeypatch, 0, 2)
    with pytest.raises(Crash):
        train_run(config, tmp_path / "run", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / "config.yaml").write_text(saved.replace("lr: 0.03", "lr: 0.05"))
    with pytest.raises(UserError, match="other training options"):
        resume_run(tmp_path / "run", progress=False, backbone=tiny_bert())


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = checkpoint_module.rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    checkpoint_module.restore_rng(state)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def pretune_process(*argv, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pretune", *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path, task_folder):
    """The real command, killed with SIGKILL (no chance to clean up) at a random step, often in the
    middle of writing a checkpoint; `--resume` then ends exactly like a run that never stopped."""
    options = [
        "--task", task_folder, "--model", "bert-tiny", "--method", "head", "--steps", 60, "--batch-size", 2,
        "--eval-every", 10, "--checkpoint-every", 1, "--lr", 0.01, "--device", "cpu", "--quiet",
    ]
    seed = int(os.environ.get("PRETUNE_KILL_SEED", time.time_ns() % 100_000))
    kill_at = random.Random(seed).randint(2, 40)
    print(f"kill step {kill_at} (PRETUNE_KILL_SEED={seed} repeats it)")  # pytest shows it when the test fails
    straight = pretune_process("train", *options, "--out", "straight", cwd=tmp_path)
    victim = pretune_process("train", *options, "--out", "victim", cwd=tmp_path)
    deadline = time.monotonic() + 300
    while (checkpoint_step(tmp_path / "victim") or 0) < kill_at:
        assert victim.poll() is None, f"finished before step {kill_at}: {victim.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    victim.kill()  # SIGKILL
    victim.wait()
    assert json.loads((tmp_path / "victim" / "run.json").read_text())["status"] == "running"
    assert not (tmp_path / "victim" / "metrics.json").exists()
    _, errors = straight.communicate(timeout=300)
    assert straight.returncode == 0, errors
    resumed = pretune_process("train", "--resume", "victim", "--quiet", cwd=tmp_path)
    _, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors
    print(f"killed at step {kill_at} or just after")  # shown when the comparison fails
    assert_same_run(tmp_path / "victim", tmp_path / "straight")
    # No leftovers of the kill (.checkpoint.old, .checkpoint.partial, temporary files), and the same
    # adapter bytes as the run that never stopped (another process: safetensors' metadata order varies).
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == FINISHED_RUN
    assert sorted(p.name for p in (tmp_path / "straight").iterdir()) == FINISHED_RUN
    adapter = "adapter.safetensors"
    assert (tmp_path / "victim" / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()
    # The history written as the steps went: after the resume, each step once, as if it never stopped.
    history = "history.jsonl"
    assert (tmp_path / "victim" / history).read_text() == (tmp_path / "straight" / history).read_text()


FINISHED_RUN = sorted([".lock", "adapter.safetensors", "config.yaml", "history.jsonl", "metrics.json", "predictions.jsonl",
                       "run.json", "train.log"])


def test_resume_cleans_what_a_kill_left_and_the_finished_folder_holds_only_the_run(tmp_path, monkeypatch, straight_head):
    crash_after(monkeypatch, phase=0, step=3)
    with pytest.raises(Crash):
        train_run(tiny_config(tmp_path), tmp_path / "run", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    run = tmp_path / "run"
    shutil.copytree(run / "checkpoint", run / ".checkpoint.old")  # a kill after the new checkpoint was in place
    (run / ".checkpoint.partial").mkdir()  # a kill in the middle of writing the next one
    (run / ".metrics.json.0123456789ab").write_text("{")  # a kill in the middle of an atomic write
    (run / "checkpoint" / ".trainer.pt.abcdefabcdef").write_bytes(b"\0")
    assert json.loads((run / "run.json").read_text())["status"] == "failed"  # the Crash
    resume_run(run, progress=False, backbone=tiny_bert())
    assert sorted(p.name for p in run.iterdir()) == FINISHED_RUN
    assert_same_run(run, straight_head)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "complete" and "error" not in status  # the earlier attempt's error is gone


def test_identical_weights_give_identical_adapter_bytes_in_every_process():
    """safetensors writes its metadata from a hash map (another order in each process); pretune
    writes a canonical header, so the same weights are the same bytes."""
    script = (
        "import hashlib, torch\nfrom pretune.storage import weights_bytes\n"
        "state = {'head.1.weight': torch.arange(6.).view(2, 3), 'head.1.bias': torch.ones(2), 'b': torch.zeros(1)}\n"
        "print(hashlib.sha256(weights_bytes(state)).hexdigest())\n"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]  # at once
    digests = {run.communicate(timeout=300)[0] for run in runs}
    assert [run.returncode for run in runs] == [0, 0]
    header = weights_bytes({"b": torch.zeros(1), "a": torch.ones(2)})[8:].split(b"}}")[0] + b"}}"
    assert len(digests) == 1 and header.startswith(b'{"__metadata__":{"format":"pt","pretune":')  # sorted keys


def test_atomically_written_files_get_the_mode_the_umask_gives(tmp_path):
    """The temporary file is private while written; the finished file is readable as any new file is."""
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    (tmp_path / "plain.txt").write_text("{}\n")
    assert (tmp_path / "metrics.json").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
