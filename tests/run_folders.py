"""Comparing two run folders: what determinism and resume tests assert."""

import json

import torch

from pretune.runs import load_weights


def without_timings(value):
    """metrics.json minus the wall-clock figures, which differ from run to run."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k and "per_second" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_files(folder):
    metrics = without_timings(json.loads((folder / "metrics.json").read_text()))
    return metrics, (folder / "predictions.jsonl").read_text(), load_weights(folder / "adapter.safetensors")


def assert_same_run(folder, reference):
    """Same metrics (timings aside), the same predictions byte for byte, bit-identical weights."""
    metrics, predictions, weights = run_files(folder)
    metrics_0, predictions_0, weights_0 = run_files(reference)
    assert metrics == metrics_0
    assert predictions == predictions_0
    assert weights.keys() == weights_0.keys()
    for name in weights:
        assert torch.equal(weights[name], weights_0[name]), name
