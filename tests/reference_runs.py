"""Short, fixed-seed runs of every prompt method whose test predictions are stored in `tests/reference/`.

They pin what the methods compute: a change that should not alter a method (a refactoring, a speed-up)
must reproduce the stored label probabilities. Regenerate deliberately, and say why in the commit:

    .venv/bin/python tests/reference_runs.py            # writes tests/reference/<model>.jsonl

The data is few-shot SST-2 (split 16-42) from the shared benchmark folder: 32 training sentences, the
16 dev sentences (every other one: the file is sorted by label), and the first `TEST_SIZE[model]` test sentences (all 872 for bert-tiny; 48 for
smollm2-135m, whose evaluation costs about 1 s a sentence on 2 cores with float32).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REFERENCE = Path(__file__).resolve().parent / "reference"
SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "fewshot" / "sst-2"
TEST_SIZE = {"bert-tiny": 872, "smollm2-135m": 48}

COMMON = ["--steps", "4", "--batch-size", "4", "--eval-every", "2", "--seed", "13", "--device", "cpu", "--dtype", "float32",
          "--eval-start", "no",  # the references predate step-0 evaluation: they pin the states training reached
          "--checkpoint-every", "0", "--quiet"]

# name -> options of `pretune train` (the CLI's names are the stable contract)
CASES: dict[str, list[str]] = {
    "pet": ["--method", "pet"],  # whole body
    "pet-lora": ["--method", "pet", "--train", "lora"],
    "ptuning": ["--method", "ptuning"],  # lstm encoder, body frozen
    "ptuning-mlp": ["--method", "ptuning", "--encoder", "mlp"],
    "prompt-tuning": ["--method", "ptuning", "--encoder", "none", "--prompt-length", "4"],
    "deep-prompt": ["--method", "deep-prompt", "--prompt-length", "4"],
    "head": ["--method", "head", "--steps", "20"],
}
# Extra cases on the fast masked LM only: pattern ensembles, distillation, calibration, aggregation.
EXTRA_CASES: dict[str, list[str]] = {
    "pet-calibrated-mean": ["--method", "pet", "--train", "bitfit", "--calibrate", "--aggregate", "mean",
                            "--verbalizer", "positive=great,good negative=terrible,bad"],
    "pet-ensemble-distil": ["--method", "pet", "--train", "bitfit",
                            "--pattern", "{text} It was {mask}.", "--pattern", "{text} All in all, {mask}.",
                            "--distil", "--unlabelled", "{unlabelled}"],
    "ptuning-anchor-full": ["--method", "ptuning", "--pattern", "[P*2]{text} [P:it] was {mask}.", "--train", "full"],
}


def cases(model: str) -> dict[str, list[str]]:
    return {**CASES, **(EXTRA_CASES if model == "bert-tiny" else {})}


def write_task(folder: Path, model: str) -> Path:
    """A task folder with the reference's subsets of few-shot SST-2 (read from the shared data)."""
    folder.mkdir(parents=True, exist_ok=True)
    split = SHARED_SST2 / "16-42"
    lines = {
        "train": (split / "train.jsonl").read_text().splitlines(),
        "dev": (split / "dev.jsonl").read_text().splitlines()[::2],
        "test": (SHARED_SST2 / "test.jsonl").read_text().splitlines()[: TEST_SIZE[model]],
    }
    for name, rows in lines.items():
        (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "task.json").write_text((SHARED_SST2 / "task.json").read_text())
    # unlabelled texts for distillation: the other dev sentences, labels dropped
    texts = [json.loads(line)["text"] for line in (split / "dev.jsonl").read_text().splitlines()[1::2]]
    (folder / "unlabelled.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return folder


def run_case(model: str, name: str, workdir: Path) -> list[dict]:
    """Train one case; its test predictions (label probabilities per sentence)."""
    from pretune.cli import main

    task = write_task(workdir / "task", model)
    options = [o.replace("{unlabelled}", str(task / "unlabelled.jsonl")) for o in cases(model)[name]]
    out = workdir / name
    code = main(["train", "--task", str(task), "--model", model, *COMMON, *options, "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"reference case {model}/{name} exited {code}")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{"prediction": r["prediction"], "probabilities": r["probabilities"]} for r in rows]


def generate(model: str) -> None:
    import torch

    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases(model):
            print(f"{model}: {name}", flush=True)
            results[name] = run_case(model, name, Path(tmp))
    save(model, results)


def save(model: str, results: dict[str, list[dict]]) -> None:
    """One line per case: the labels' probabilities per test sentence (7 decimals), compact for diffs."""
    REFERENCE.mkdir(exist_ok=True)
    lines = [json.dumps({"model": model, "common": COMMON, "test_size": TEST_SIZE[model]})]
    for name, rows in results.items():
        labels = list(rows[0]["probabilities"])
        probabilities = [[round(row["probabilities"][label], 7) for label in labels] for row in rows]
        lines.append(json.dumps({"case": name, "options": cases(model)[name], "labels": labels,
                                 "probabilities": probabilities}, separators=(",", ":")))
    (REFERENCE / f"{model}.jsonl").write_text("\n".join(lines) + "\n")


def load(model: str) -> dict[str, list[dict]]:
    """The stored predictions, in the shape `run_case` returns."""
    lines = (REFERENCE / f"{model}.jsonl").read_text().splitlines()[1:]
    stored = {}
    for record in map(json.loads, lines):
        stored[record["case"]] = [{"probabilities": dict(zip(record["labels"], probs))}
                                  for probs in record["probabilities"]]
    return stored


if __name__ == "__main__":
    for model in sys.argv[1:] or list(TEST_SIZE):
        generate(model)
