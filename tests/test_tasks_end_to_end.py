"""Regression (STS-B) and sentence-pair (RTE) tasks end to end on the real bert-tiny: `pretune train`
on small samples of the benchmark's few-shot splits, the run folder, and predictions reloaded.
Skipped, with the reason, on a machine without the benchmark data (../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretune.api import load_run
from pretune.cli import main
from pretune.data import Example

FEWSHOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fewshot"


def sample_task(tmp_path: Path, name: str, train: int, test: int) -> Path:
    """A task folder with the first examples of split 16-42 (train, dev) and of the test set."""
    source = FEWSHOT / name
    if not (source / "task.json").is_file():
        pytest.skip(f"the benchmark data is not on this machine: {source}/task.json not found")
    folder = tmp_path / name
    folder.mkdir()
    (folder / "task.json").write_text((source / "task.json").read_text())
    for split, path, count in (("train", "16-42/train.jsonl", train), ("dev", "16-42/dev.jsonl", train),
                               ("test", "test.jsonl", test)):
        lines = (source / path).read_text().splitlines()
        if split != "test":  # the split files are sorted by label: take both ends
            lines = lines[: count // 2] + lines[-(count - count // 2) :]
        (folder / f"{split}.jsonl").write_text("\n".join(lines[:count]) + "\n")
    return folder


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train(folder: Path, out: Path, *options: str) -> dict:
    code = main(["train", "--task", str(folder), "--model", "bert-tiny", "--device", "cpu", "--quiet",
                 "--out", str(out), *options])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_sts_b_regression_head_end_to_end(tmp_path):
    folder = sample_task(tmp_path, "sts-b", train=16, test=24)
    out = tmp_path / "run"
    metrics = train(folder, out, "--method", "head", "--steps", "60", "--batch-size", "8", "--lr", "0.05",
                    "--eval-every", "20")
    assert metrics["trainable_parameters"] == 128 + 1  # a linear head with one output on the frozen body
    history = metrics["train"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]  # mean squared error falls
    rows = read_rows(out / "predictions.jsonl")
    gold = [json.loads(line)["label"] for line in (folder / "test.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == gold and all(isinstance(r["prediction"], float) for r in rows)
    predicted = np.array([r["prediction"] for r in rows])
    assert predicted.std() > 0  # not one constant
    assert metrics["test"]["pearson"] == pytest.approx(float(np.corrcoef(predicted, gold)[0, 1]), abs=1e-5)
    reloaded = load_run(out).predict([Example(r["text"], r["text_pair"]) for r in rows])
    assert [r["prediction"] for r in reloaded] == pytest.approx(predicted.tolist(), abs=1e-4)


def test_rte_pair_task_with_pet_reads_both_texts(tmp_path):
    folder = sample_task(tmp_path, "rte", train=8, test=8)
    out = tmp_path / "run"
    pattern = "{text} Question: {text_pair}? Answer: {mask}."
    metrics = train(folder, out, "--method", "pet", "--train", "bitfit", "--steps", "4", "--batch-size", "4",
                    "--pattern", pattern, "--verbalizer", "entailment=yes not_entailment=no")
    rows = read_rows(out / "predictions.jsonl")
    assert len(rows) == metrics["test"]["examples"] == 8 and all(r["text_pair"] for r in rows)
    assert metrics["test"]["accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in rows]))
    predictor = load_run(out)
    pairs = [Example(r["text"], r["text_pair"]) for r in rows]
    swapped = [Example(r["text"], rows[(i + 1) % len(rows)]["text_pair"]) for i, r in enumerate(rows)]
    same, other = predictor.scores(pairs), predictor.scores(swapped)
    saved = torch.tensor([[r["probabilities"][label] for label in ("entailment", "not_entailment")] for r in rows])
    assert torch.allclose(same.softmax(-1), saved, atol=1e-5)
    assert (same - other).abs().max() > 1e-4  # the second text reaches the model


def test_rte_pair_task_with_a_head_encodes_both_texts(tmp_path):
    folder = sample_task(tmp_path, "rte", train=8, test=8)
    out = tmp_path / "run"
    metrics = train(folder, out, "--method", "head", "--steps", "20", "--batch-size", "8", "--lr", "0.01")
    assert metrics["train"]["steps"] == 20
    predictor = load_run(out)
    rows = read_rows(out / "predictions.jsonl")
    alone = predictor.scores([Example(r["text"]) for r in rows])
    paired = predictor.scores([Example(r["text"], r["text_pair"]) for r in rows])
    assert (alone - paired).abs().max() > 1e-4
