"""The `pretune` command end to end on the real bert-tiny, and its answers to bad input."""

import json
import re
import subprocess
import sys

import pytest

from pretune.cli import main
from pretune.demo import ARMS

TRAIN = ["--model", "bert-tiny", "--method", "head", "--epochs", "20", "--lr", "0.01", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained_run(tmp_path, task_folder, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "--task", task_folder, *TRAIN, "--out", out)
    assert code == 0, stdout
    return out


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"run.json", "config.yaml", "metrics.json", "predictions.jsonl", "adapter.safetensors", "train.log"} <= names
    assert json.loads((trained_run / "run.json").read_text())["status"] == "complete"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == 128 * 2 + 2  # frozen body: the linear head only
    assert metrics["adapter_bytes"] < 4096  # the head alone, not the body
    assert metrics["train"]["steps"] == 20
    rows = [json.loads(line) for line in (trained_run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["test"]["examples"] == 8
    assert metrics["test"]["accuracy"] == pytest.approx(sum(r["prediction"] == r["label"] for r in rows) / len(rows))
    assert "dev_accuracy" in (trained_run / "train.log").read_text()


def test_predict_reloads_and_reproduces_the_runs_predictions(trained_run, task_folder, tmp_path, capsys):
    output = tmp_path / "predictions.jsonl"
    code, _, _ = run_cli(capsys, "predict", "--run", trained_run, "--input", task_folder / "test.jsonl", "--output", output)
    assert code == 0
    fresh = [json.loads(line) for line in output.read_text().splitlines()]
    saved = [json.loads(line) for line in (trained_run / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in fresh] == [r["prediction"] for r in saved]
    for a, b in zip(fresh, saved):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    code, _, err = run_cli(capsys, "predict", "--run", trained_run, "--input", task_folder / "test.jsonl", "--output", output)
    assert code == 2 and "already exists" in err  # never overwrite the user's file


def test_eval_a_run_on_a_labelled_file(trained_run, task_folder, capsys):
    code, out, _ = run_cli(capsys, "eval", "--run", trained_run, "--input", task_folder / "test.jsonl", "--quiet")
    assert code == 0
    assert json.loads(out)["examples"] == 8 and "accuracy" in json.loads(out)


def test_existing_run_folder_is_refused_then_overwritten_on_request(trained_run, task_folder, capsys):
    code, _, err = run_cli(capsys, "train", "--task", task_folder, *TRAIN, "--out", trained_run)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, _ = run_cli(capsys, "train", "--task", task_folder, *TRAIN, "--steps", "2", "--out", trained_run, "--overwrite")
    assert code == 0 and json.loads((trained_run / "metrics.json").read_text())["train"]["steps"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "cannot load model 'no-such-model'"),
        (["--model", "/no/such/folder"], "model not found: /no/such/folder"),
        (["--method", "magic"], "unknown --method 'magic'"),
        (["--train", "sideways"], "unknown --train 'sideways'"),
        (["--pooling", "max"], "unknown --pooling 'max'"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--device", "cuda:3"], None),  # no CUDA here: refused; with CUDA it would train
    ],
)
def test_bad_options_are_one_line_and_leave_no_run_folder(tmp_path, task_folder, capsys, extra, message):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--task", task_folder, *TRAIN, *extra, "--out", out)
    if message is None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        message = "no CUDA device"
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_data_leaves_no_run_folder(tmp_path, task_folder, capsys):
    (task_folder / "train.jsonl").write_text('{"text": "fine", "label": "positive"}\n{"text": oops}\n')
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--task", task_folder, *TRAIN, "--out", out)
    assert code == 2 and "train.jsonl:2: malformed JSON" in err
    assert not out.exists()


def test_predict_refuses_an_unfinished_run(tmp_path, trained_run, task_folder, capsys):
    status = json.loads((trained_run / "run.json").read_text())
    (trained_run / "run.json").write_text(json.dumps({**status, "status": "running"}))
    code, _, err = run_cli(capsys, "predict", "--run", trained_run, "--input", task_folder / "test.jsonl")
    assert code == 2 and "is not complete" in err


def test_usage_errors_are_one_line_in_a_real_process(tmp_path):
    """The installed entry point: exit 2, one line, no traceback."""
    for argv in (["train", "--nope"], ["predict", "--run", str(tmp_path / "missing"), "--input", "x.jsonl"]):
        done = subprocess.run([sys.executable, "-m", "pretune", *argv], capture_output=True, text=True)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_models_lists_the_packaged_models(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("smollm2-135m", "gemma3-270m", "bert-tiny", "minilm-l6"):
        assert name in out


def test_demo_runs_in_quick_mode(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--model", "bert-tiny", "--quick", "--out", tmp_path / "demo")
    assert code == 0
    assert "packaged example set" in out
    for arm in ("classic: linear head", "PET zero-shot", "P-tuning", "PET fine-tuned"):
        assert re.search(rf"{arm}.*\d+\.\d%", out), arm
    (summary,) = (tmp_path / "demo").glob("demo-*.json")
    assert [row["method"] for row in json.loads(summary.read_text())["arms"]] == [arm.label for arm in ARMS]


def test_demo_on_an_encoder_runs_the_head_arm_and_names_the_skipped_arms(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--model", "minilm-l6", "--quick", "--out", tmp_path / "demo")
    assert code == 0
    assert "no LM head" in out and "skipped: PET zero-shot" in out
    (summary,) = (tmp_path / "demo").glob("demo-*.json")
    assert [row["method"] for row in json.loads(summary.read_text())["arms"]] == [ARMS[0].label]
