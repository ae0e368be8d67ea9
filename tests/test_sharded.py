"""Sharded training (FSDP2 through accelerate): which layers become shard units, and bert-tiny trained
sharded over 2 CPU processes (gloo) against one process, fresh and resumed; FSDP on GPUs where there are some."""

import json
import os
import subprocess
import sys
from pathlib import Path

import accelerate
import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from conftest import _tiny, kill_after_checkpoint, write_task_folder
from fsdp_on_cpu import SHARDED_REPORT
from pretune.backbones import load_backbone
from pretune.cli import main
from pretune.errors import UserError
from pretune.sharding import shard_unit_classes
from pretune.training.checkpoint import checkpoint_step
from pretune.training.engine import Engine, check_launch

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "examples" / "accelerate" / "fsdp.yaml"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
# 2 processes sum the gradients of a batch in another order than one: the same steps within float32 rounding.
PROBABILITY_TOLERANCE = 1e-5  # seen: 5e-7
WEIGHT_TOLERANCE = 1e-4  # seen: 6e-6


def test_tied_input_embeddings_are_no_shard_unit_of_their_own():
    """bert's masked-LM head shares the word embeddings: BertEmbeddings must stay in the unit around both."""
    tied = _tiny("mlm", "bert-tiny").model
    assert sorted(tied._no_split_modules) == ["BertEmbeddings", "BertLayer"]
    assert shard_unit_classes(tied) == ["BertLayer"]
    untied = _tiny("encoder", "bert-tiny").model  # no LM head: nothing shares the embeddings
    assert shard_unit_classes(untied) == ["BertEmbeddings", "BertLayer"]


def dropout_free_bert_tiny(folder: Path) -> Path:
    """bert-tiny without dropout: one process and two then draw no random masks, and train alike."""
    backbone = load_backbone("bert-tiny", "mlm")
    backbone.model.config.hidden_dropout_prob = backbone.model.config.attention_probs_dropout_prob = 0.0
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


def train_options(tmp_path: Path) -> list[str]:
    """PET training the whole body, so every layer is sharded; without a dev split the last weights are
    the run's, so its predictions are those of the trained model."""
    task = write_task_folder(tmp_path / "task")
    (task / "dev.jsonl").unlink()
    model = dropout_free_bert_tiny(tmp_path / "bert-tiny-no-dropout")
    return ["--task", str(task), "--model", str(model), "--method", "pet", "--train", "full", "--steps", "8",
            "--batch-size", "4", "--body-lr", "1e-4", "--dtype", "float32", "--device", "cpu", "--quiet"]


def sharded(*arguments: str) -> subprocess.Popen:
    """`pretune` launched as the README says, with the shipped FSDP config, in 2 CPU processes."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes", "2"]
    return subprocess.Popen([*launch, str(ROOT / "tests" / "fsdp_on_cpu.py"), *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finished(process: subprocess.Popen) -> str:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]
    for rank in (0, 1):
        assert SHARDED_REPORT.format(rank=rank, sharded=42, total=42) in errors  # every parameter, on both
    return errors


def assert_same_run(one: Path, two: Path) -> None:
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert json.loads((two / "run.json").read_text())["status"] == "complete"
    rows = [[json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()] for run in (one, two)]
    assert len(rows[0]) == 8 and [r["prediction"] for r in rows[1]] == [r["prediction"] for r in rows[0]]
    for alone, spread in zip(*rows):
        assert spread["probabilities"] == pytest.approx(alone["probabilities"], abs=PROBABILITY_TOLERANCE)
    weights = [load_file(run / "adapter.safetensors") for run in (one, two)]
    assert sorted(weights[1]) == sorted(weights[0]) and len(weights[0]) == 42  # the whole body, gathered
    for name, tensor in weights[0].items():
        assert torch.allclose(weights[1][name], tensor, rtol=0, atol=WEIGHT_TOLERANCE), name
    start = load_file(one.parent / "bert-tiny-no-dropout" / "model.safetensors")
    name = "bert.encoder.layer.0.output.dense.weight"
    assert not torch.allclose(weights[1]["model." + name], start[name], rtol=0, atol=WEIGHT_TOLERANCE)  # trained


@pytest.mark.slow
def test_two_processes_sharded_on_cpus_train_like_one_and_resume_a_checkpoint(tmp_path, monkeypatch):
    """FSDP2 over gloo: every parameter sharded (DTensors); the checkpoints, the adapter and the test
    predictions gathered whole; the run equals one process's within float32 rounding. A run stopped in
    one process resumes sharded (the optimizer's moments cut into slices) to the same result."""
    options = train_options(tmp_path)
    two = sharded("train", *options, "--checkpoint-every", "2", "--out", str(tmp_path / "two"))
    assert main(["train", *options, "--out", str(tmp_path / "one")]) == 0
    finished(two)
    assert_same_run(tmp_path / "one", tmp_path / "two")

    kill_after_checkpoint(monkeypatch, 4)
    assert main(["train", *options, "--checkpoint-every", "2", "--out", str(tmp_path / "resumed")]) != 0  # killed
    assert checkpoint_step(tmp_path / "resumed") == 4
    monkeypatch.undo()
    errors = finished(sharded("train", "--resume", str(tmp_path / "resumed")))
    assert "resumed at step 4" in (tmp_path / "resumed" / "train.log").read_text(), errors[-2000:]
    assert_same_run(tmp_path / "one", tmp_path / "resumed")


class FSDP1Accelerator:
    """What accelerate's Accelerator says under an FSDP config of version 1 (a GPU group)."""

    distributed_type, is_fsdp2 = DistributedType.FSDP, False

    def __init__(self, **options):
        pass


def test_fsdp_version_1_is_refused(monkeypatch):
    """FSDP1 wraps the method and flattens its parameters, which the engine does not gather: refused."""
    monkeypatch.setattr(accelerate, "Accelerator", FSDP1Accelerator)
    with pytest.raises(UserError) as refused:
        Engine(grad_accum=1)
    assert str(refused.value) == ("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config"
                                  " (examples/accelerate/fsdp.yaml)")


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_each_spelling_accelerate_uses_for_a_deepspeed_launch_is_refused(monkeypatch, value):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", value)
    with pytest.raises(UserError, match="^DeepSpeed is not supported"):
        check_launch()


@pytest.mark.parametrize("value", [None, "false", "0"])
def test_a_launch_without_deepspeed_passes(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", value)
    assert check_launch() is None


def test_a_deepspeed_launch_is_refused_before_any_model_loads(tmp_path, task_folder, monkeypatch, capsys):
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED: one line, exit 2, no run folder
    (ZeRO's partitioned parameters and optimizer state would be read as whole, and the run end wrong)."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr("pretune.run_config.load_backbone", lambda *a, **k: pytest.fail("a model loaded"))
    code = main(["train", "--task", str(task_folder), "--model", "bert-tiny", "--method", "pet", "--steps", "1",
                 "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == ["pretune: error: DeepSpeed is not supported: shard with FSDP "
                                        "(examples/accelerate/fsdp.yaml) or train data-parallel (examples/accelerate/ddp.yaml)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP on GPUs: no CUDA device on this machine")
def test_fsdp_from_the_shipped_accelerate_config_on_gpus(tmp_path, task_folder):
    """The documented launch with the shipped FSDP config trains bert-tiny to a complete run on every GPU."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
              "--num_processes", str(torch.cuda.device_count())]
    options = ["--task", str(task_folder), "--model", "bert-tiny", "--method", "pet", "--train", "full", "--steps", "8",
               "--batch-size", "4", "--quiet", "--out", str(tmp_path / "run")]
    done = subprocess.run([*launch, "-m", "pretune", "train", *options], capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
