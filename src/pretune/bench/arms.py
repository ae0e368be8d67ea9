"""The benchmark's arms: a name for each way of tuning a model that `pretune bench` compares.

An arm is pretune's own method run through the public API (`head`, `pet`, `zero-shot`, `ptuning`,
`ptuning-mlp`, `prompt-tuning`, `deep-prompt`) or a baseline written with the libraries people reach for today (`hf-full`, `peft-lora`,
`peft-ptuning`, `peft-prompt`, see `baselines`). Every arm gets the same `RunSpec`: task, model,
seed (the LM-BFF split `K-<seed>` and the training seed), step budget and batch size.

A new method joins the benchmark with one entry in `ARMS`, e.g.

    _pretune_arm("ptuning-mlp", "ptuning", "P-tuning with an MLP prompt encoder", {"encoder": "mlp"}),

An arm whose pretune method does not exist (yet) in this version is skipped with a note.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import UserError

LM_BFF_SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class RunSpec:
    """One (task, model, seed) under the benchmark's shared protocol."""

    task: str
    model: str
    seed: int
    steps: int = 100
    batch_size: int = 8
    eval_batch_size: int = 32
    shots: int | None = None  # sample K per class (with this seed) from a dataset without ready splits
    device: str = "auto"
    text_field: str = "text"
    pair_field: str | None = "text_pair"
    label_field: str = "label"
    dtype: str = "float32"  # a concrete number format (the benchmark decides `auto` before keying runs)
    test_sample: int | None = None  # evaluate on a fixed random sample of this many test examples

    def protocol(self) -> dict:
        """What defines a run's result besides task, model, arm and seed (hashed into its key)."""
        data = asdict(self)
        for name in ("task", "model", "seed", "device"):
            data.pop(name)
        if data["dtype"] == "float32":
            data.pop("dtype")  # runs from before --dtype were float32: they keep their keys
        if data["test_sample"] is None:
            data.pop("test_sample")  # and runs on the whole test set keep theirs
        return data

    def run_config(self, method: str = "head", method_options: dict | None = None, train: str | None = None,
                   training: dict | None = None):
        from ..api import RunConfig
        from ..training.trainer import TrainConfig

        settings = {"steps": self.steps, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "seed": self.seed, "device": self.device, **(training or {})}
        return RunConfig(
            task=self.task, model=self.model, method=method, method_options=dict(method_options or {}), train=train,
            split_seed=self.seed, shots=self.shots, text_field=self.text_field, pair_field=self.pair_field,
            label_field=self.label_field, dtype=self.dtype, test_sample=self.test_sample, training=TrainConfig(**settings),
        )

    def load_task(self):
        """The data every arm of this (task, seed) sees: the same split, the same sampling."""
        from ..api import prepare_task

        return prepare_task(self.run_config())


Runner = Callable[["Arm", RunSpec], dict]


@dataclass(frozen=True, eq=False)
class Arm:
    name: str
    family: str  # pretune | transformers | peft: who provides what the arm runs
    about: str  # one line for the report
    runner: Runner  # runs in the benchmark's worker process; returns the measured fields of a record
    options: dict = field(default_factory=dict)  # what defines the arm (hashed into its runs' keys)
    method: str | None = None  # the pretune method it needs, if any
    note: str = ""  # how it departs from the shared protocol, for the report
    model: str | None = None  # the model it always runs on (an anchor's own); None: the benchmark's --model
    classification_only: bool = False  # skipped on regression tasks

    def unavailable_reason(self) -> str | None:
        from ..methods import METHODS

        if self.method is not None and self.method not in METHODS:
            return f"method '{self.method}' is not in this version of pretune"
        if self.family == "setfit" and not _installed("setfit"):
            return "the setfit library is not installed (pip install -e '.[bench]')"
        return None

    def spec_for(self, spec: RunSpec) -> RunSpec:
        """The benchmark's spec as this arm runs it (on its own model, where it has one)."""
        return spec if self.model is None else replace(spec, model=self.model)

    def describe(self) -> dict:
        return {"family": self.family, "about": self.about, "options": self.options, "note": self.note}


# ---------------------------------------------------------------- pretune's methods, through the public API


def run_pretune(arm: Arm, spec: RunSpec) -> dict:
    """train_run into a scratch run folder, exactly as `pretune train` would; read back what it measured."""
    from ..api import train_run

    options = arm.options
    config = spec.run_config(options["method"], options.get("method_options"), options.get("train"),
                             options.get("training"))
    with tempfile.TemporaryDirectory(prefix="pretune-bench-") as scratch:
        result = train_run(config, out=Path(scratch) / "run", progress=False)
        rows = [json.loads(line) for line in (Path(scratch) / "run" / "predictions.jsonl").read_text().splitlines()]
    metrics, labels = result.metrics, result.method.task.labels
    train = metrics["train"]
    seconds = train["seconds"] + train.get("featurize_seconds", 0.0)
    examples_seen = train["examples_per_second"] * train["seconds"]
    return {
        "dev": metrics.get("dev"),
        "test": _without_counts(metrics["test"]),
        "eval_examples_per_second": metrics["test"]["examples_per_second"],
        "train_seconds": seconds,
        "train_examples_per_second": examples_seen / seconds if seconds > 0 else 0.0,
        "steps": train["steps"],
        "best_step": train["best_step"],
        "history": train["history"],
        "trainable_parameters": metrics["trainable_parameters"],
        "total_parameters": metrics["total_parameters"],
        "adapter_bytes": metrics["adapter_bytes"],
        "labels": labels,
        **_predictions(rows, labels),
    }


def run_untrained(arm: Arm, spec: RunSpec) -> dict:
    """Zero-shot: the method as it is, nothing trained and nothing to save (what `pretune eval --task`
    measures), keeping the test predictions for the confusion matrix."""
    from ..api import build_method
    from ..training.evaluation import evaluate, predictions_from_scores
    from ..training.trainer import resolve_device

    options = arm.options
    config = spec.run_config(options["method"], options.get("method_options"), options.get("train"))
    task = spec.load_task()
    method = build_method(config, task)
    method.to(resolve_device(config.training.device))
    method.finalize()
    measured = {}
    for split in ("dev", "test"):
        examples = getattr(task, split)
        start = time.perf_counter()
        split_metrics, scores = evaluate(method, examples, task.targets(examples), config.training.eval_batch_size)
        measured[split] = (split_metrics, len(examples) / (time.perf_counter() - start), scores)
    test_metrics, test_rate, test_scores = measured["test"]
    return {
        "dev": measured["dev"][0] if task.dev else None,
        "test": test_metrics,
        "eval_examples_per_second": test_rate,
        "train_seconds": 0.0,
        "train_examples_per_second": None,
        "steps": 0,
        "best_step": None,
        "history": [],
        "trainable_parameters": 0,
        "total_parameters": sum(p.numel() for p in method.parameters()),
        "adapter_bytes": 0,
        "labels": task.labels,
        "predictions": predictions_from_scores(task, test_scores).tolist(),
        "targets": list(task.targets(task.test)),
    }


def _without_counts(split_metrics: dict) -> dict:
    return {k: v for k, v in split_metrics.items() if k not in ("examples", "examples_per_second")}


def _predictions(rows: list[dict], labels: list[str] | None) -> dict:
    if labels is None:  # regression: the predicted values themselves
        return {"predictions": [row["prediction"] for row in rows], "targets": [float(row["label"]) for row in rows]}
    index = {label: i for i, label in enumerate(labels)}
    return {"predictions": [index[row["prediction"]] for row in rows], "targets": [index[row["label"]] for row in rows]}


def _pretune_arm(name: str, method: str, about: str, method_options: dict | None = None, train: str | None = None,
                 training: dict | None = None, note: str = "", model: str | None = None) -> Arm:
    # No checkpoints in the middle of training (the baselines write none); the run folder as
    # `pretune train --checkpoint-every 0` writes it.
    training = {"checkpoint_every": 0, **(training or {})}
    options = {"method": method, "method_options": method_options or {}, "train": train, "training": training}
    # The cloze methods read label words: a regression task is refused by them, so skipped here.
    return Arm(name, "pretune", about, run_pretune, options, method=method, note=note, model=model,
               classification_only=method != "head")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _setfit_arm(name: str, model: str) -> Arm:
    from .setfit_arm import run_setfit

    return Arm(name, "setfit", f"SetFit (setfit 1.2.0, its defaults) on {model}: contrastive pairs tune the body, then a "
               "logistic-regression head", run_setfit, {"library": "setfit", "defaults": True}, model=model,
               note=f"on {model}, whatever --model says; SetFit's own schedule (one epoch over its oversampled pairs), "
               "not the step budget; no dev selection",
               classification_only=True)


def _baseline_arm(name: str, family: str, about: str, options: dict) -> Arm:
    from .baselines import run_baseline

    return Arm(name, family, about, run_baseline, options)


def _label_word_arm(name: str, about: str, options: dict) -> Arm:
    from .baselines_lm import run_lm_baseline

    return Arm(name, "peft", about, run_lm_baseline, {**options, "readout": "label words"}, classification_only=True,
               note="causal LMs only; the task's built-in causal pattern, each label's first word")


def _registry() -> dict[str, Arm]:
    arms = [
        Arm("zero-shot", "pretune", "PET pattern and label words, no training", run_untrained,
            {"method": "pet", "untrained": True}, method="pet", note="no training: the same test result for every seed",
            classification_only=True),
        _pretune_arm(
            "head", "head", "classic fine-tuning: linear head on the frozen body's cached last-token/[CLS] state",
            training={"steps": None, "epochs": 100},
            note="100 epochs instead of the step budget: on cached features an epoch costs milliseconds",
        ),
        _pretune_arm("pet", "pet", "PET prompt-based fine-tuning: the task's built-in pattern, full body"),
        _pretune_arm("ptuning", "ptuning", "P-tuning: the task's built-in template (PET pattern + soft tokens), LSTM encoder, "
                     "body frozen"),
        _pretune_arm("ptuning-mlp", "ptuning", "P-tuning with an MLP prompt encoder, body frozen", {"encoder": "mlp"}),
        _pretune_arm("prompt-tuning", "ptuning", "prompt tuning (Lester et al.): 4 soft tokens in front of the PET pattern, "
                     "no encoder, body frozen", {"encoder": "none", "prompt_length": 4}),
        _pretune_arm("deep-prompt", "deep-prompt", "deep prompts (P-tuning v2): 16 key/value vectors at every layer, "
                     "PET pattern, body frozen", {"prompt_length": 16}),
        _pretune_arm("head-mpnet", "head", "classic fine-tuning on mpnet-base (all-mpnet-base-v2): linear head on the "
                     "frozen body's cached mean-pooled state", {"pooling": "mean"}, training={"steps": None, "epochs": 100},
                     note="on mpnet-base, whatever --model says; 100 epochs on cached features", model="mpnet-base"),
        _setfit_arm("setfit-minilm", "minilm-l6"),
        _setfit_arm("setfit-mpnet", "mpnet-base"),
        _baseline_arm("hf-full", "transformers", "AutoModelForSequenceClassification, full fine-tuning, lr 2e-5",
                      {"peft": None, "lr": 2e-5}),
        _baseline_arm("hf-frozen", "transformers", "AutoModelForSequenceClassification, body frozen (only the head trains), lr 1e-3",
                      {"peft": None, "freeze_body": True, "lr": 1e-3}),
        _baseline_arm("peft-lora", "peft", "PEFT LoRA (r=8, alpha 16, q/v projections) + classification head, lr 3e-4",
                      {"peft": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "lr": 3e-4}),
        _baseline_arm("peft-ptuning", "peft", "PEFT P_TUNING (20 virtual tokens, MLP encoder) + classification head, lr 1e-3",
                      {"peft": "p_tuning", "virtual_tokens": 20, "encoder_hidden": 128, "lr": 1e-3}),
        _baseline_arm("peft-prompt", "peft", "PEFT PROMPT_TUNING (20 virtual tokens) + classification head, lr 1e-3",
                      {"peft": "prompt_tuning", "virtual_tokens": 20, "lr": 1e-3}),
        _label_word_arm("peft-prompt-lm", "PEFT PROMPT_TUNING (CAUSAL_LM, 20 virtual tokens) reading the label words' "
                        "logits after the task's pattern, lr 3e-2 (PEFT's causal-LM prompt-tuning example)",
                        {"peft": "prompt_tuning", "virtual_tokens": 20, "lr": 3e-2}),
        _label_word_arm("peft-lora-lm", "PEFT LoRA (CAUSAL_LM, r=8, alpha 16, q/v) reading the label words' logits after "
                        "the task's pattern, lr 3e-4", {"peft": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "lr": 3e-4}),
    ]
    return {arm.name: arm for arm in arms}


ARMS: dict[str, Arm] = _registry()


def resolve_arms(names: list[str]) -> tuple[list[Arm], dict[str, str]]:
    """The arms to run, in the order given, and those skipped (name -> why). Unknown names are an error."""
    unknown = [name for name in names if name not in ARMS]
    if unknown:
        raise UserError(f"unknown arm '{unknown[0]}' in --methods (known: {', '.join(ARMS)})")
    if len(set(names)) != len(names):
        raise UserError(f"--methods names an arm twice: {', '.join(names)}")
    runnable, skipped = [], {}
    for name in names:
        reason = ARMS[name].unavailable_reason()
        if reason:
            skipped[name] = reason
        else:
            runnable.append(ARMS[name])
    return runnable, skipped
