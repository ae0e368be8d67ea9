"""The main job as a Python API: configure a run, train it, evaluate it, predict with it.

    from pretune import RunConfig, train_run, load_run
    result = train_run(RunConfig(task="sst-2", model="smollm2-135m", method="head"), out="runs/sst2-head")
    predictor = load_run("runs/sst2-head")
    predictor.predict([Example("a gorgeous, witty film")])

Everything the user can get wrong is checked before a model loads.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from . import __version__
from .backbones import DEFAULT_MODEL, Backbone, load_backbone
from .data import Columns, Example, Task, few_shot_task, load_task
from .errors import UserError
from .methods import Method, build_methods, make_config, method_spec
from .methods.autoprompt import searched, wants_search
from .runs import RunFolder, atomic_write_text, guarded, open_completed, open_resumable
from .training import recipes
from .training.checkpoint import Checkpointer
from .training.distributed import processes
from .training.evaluation import evaluate
from .training.recipes import PatternEnsemble
from .training.trainer import TrainConfig, Trainer, resolve_device, set_seed
from .tuning import BodyTraining

log = logging.getLogger("pretune")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as the run folder's config.yaml."""

    task: str
    model: str = DEFAULT_MODEL
    method: str = "head"
    method_options: dict = field(default_factory=dict)
    train: str | None = None  # body training: frozen | full | bitfit | lora | last:N; None: the method's default
    lora_r: int = 8
    lora_alpha: int = 16
    split_seed: int | None = None  # which K-<seed> split of a few-shot task folder
    shots: int | None = None  # sample K per class (LM-BFF protocol) from a full dataset
    text_field: str = "text"
    pair_field: str | None = "text_pair"
    label_field: str = "label"
    training: TrainConfig = field(default_factory=TrainConfig)

    def body_training(self) -> BodyTraining:
        spec = self.train or method_spec(self.method).default_training
        return BodyTraining.parse(spec, lora_r=self.lora_r, lora_alpha=self.lora_alpha)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["train"] = str(self.body_training())
        return data


Tuned = Method | PatternEnsemble  # what a run trains and predicts with


@dataclass
class RunResult:
    folder: Path | None
    metrics: dict
    method: Tuned


# ---------------------------------------------------------------- building blocks


def prepare_task(config: RunConfig) -> Task:
    """Read and check the data (before any model loads); apply K-shot sampling if asked."""
    columns = Columns(config.text_field, config.pair_field, config.label_field)
    task = load_task(config.task, split_seed=config.split_seed, columns=columns)
    if config.shots is not None:
        if config.shots < 1:
            raise UserError(f"--shots must be at least 1, got {config.shots}")
        task = few_shot_task(task, config.shots, config.split_seed if config.split_seed is not None else 42)
    return task


def validate(config: RunConfig, task: Task):
    """All configuration checks that need no model: method options, body training, training options."""
    method_config = make_config(config.method, dict(config.method_options), task=task)
    training = config.body_training()
    config.training.validate()
    if config.training.lr is not None and method_config.default_rates(training).own is None:
        raise UserError(f"--lr sets the rate of a method's own parameters (head, prompt); --method {config.method} "
                        "adds none: set the body's rate with --body-lr")
    return method_config, training


def build_method(config: RunConfig, task: Task, backbone: Backbone | None = None) -> Tuned:
    """The run's method, or the ensemble of its members (a pattern ensemble), built from the seed."""
    method_config, training = validate(config, task)
    backbone = backbone or load_backbone(config.model)
    method_spec(config.method).check_backbone(backbone)
    set_seed(config.training.seed)  # new parameters (head, prompt encoder) start from the seed too
    return recipes.tuned(build_methods(config.method, backbone, task, method_config, training))


# ---------------------------------------------------------------- the main job


def train_run(
    config: RunConfig, out: str | Path | None = None, overwrite: bool = False, progress: bool = True,
    backbone: Backbone | None = None,
) -> RunResult:
    """Train a method on a task's train split, keep the best state on dev, evaluate dev and test,
    and (with `out`) write a run folder, with checkpoints to resume from (`resume_run`).
    Under a multi-process launcher only rank 0 writes the folder."""
    task = prepare_task(config)
    method_config, _ = validate(config, task)
    if out is None:
        config, backbone, search = search_prompt(config, task, method_config, backbone, progress)
        result = _train_and_evaluate(config, task, None, progress, backbone)
        if search is not None:
            result.metrics["prompt"] = chosen_prompt(search)
        return result
    group = processes()
    run = group.on_main(lambda: RunFolder.create(out, overwrite))
    checkpoints = Checkpointer(out, config.training.checkpoint_every, write=group.is_main)
    with _guarded(run):
        config, backbone, search = search_prompt(config, task, method_config, backbone, progress)
        if run is not None:
            if search is not None:  # what the search chose, every candidate's score and why
                atomic_write_text(run.path / PROMPT_SEARCH, json.dumps(search.to_dict(), indent=2) + "\n")
            run.write_config(_saved_config(config, task))  # at the start: what `resume_run` reads
        result = _train_and_evaluate(config, task, run, progress, backbone, checkpoints)
    if search is not None:
        result.metrics["prompt"] = chosen_prompt(search)
    return result


def chosen_prompt(search) -> dict:
    """What the prompt search chose, for a run's summary (the whole search is in prompt_search.json)."""
    return {"patterns": search.patterns, "verbalizer": search.verbalizer, "calibrate": search.calibrate,
            "why": search.reason}


PROMPT_SEARCH = "prompt_search.json"


def search_prompt(config: RunConfig, task: Task, method_config, backbone: Backbone | None, progress: bool = True):
    """(config, backbone, search result): a prompt left to the search (`--pattern auto`,
    `--verbalizer auto`, a task without a built-in prompt) replaced by the search's choice, so that
    config.yaml holds a concrete prompt; the config unchanged (and no result) otherwise."""
    if not wants_search(method_config, task):
        return config, backbone, None
    backbone = backbone or load_backbone(config.model)
    method_spec(config.method).check_backbone(backbone)
    calibrate_given = "calibrate" in config.method_options
    chosen, result = searched(method_config, task, backbone, calibrate_given, progress)
    options = {**config.method_options, "patterns": chosen.patterns, "verbalizer": chosen.verbalizer,
               "calibrate": chosen.calibrate}
    return replace(config, method_options=options), backbone, result


def resume_run(
    folder: str | Path, progress: bool = True, device: str | None = None, backbone: Backbone | None = None
) -> RunResult:
    """Continue an interrupted run (killed, crashed, stopped) from its newest checkpoint, with the
    configuration of its config.yaml; the result equals that of an uninterrupted run (on CPU).
    A run that stopped before its first checkpoint starts again from the beginning."""
    run = open_resumable(folder)
    config = config_from_dict(run.read_config())
    if device is not None:
        config.training.device = device
    task = prepare_task(config)
    validate(config, task)
    group = processes()
    checkpoints = Checkpointer(run.path, config.training.checkpoint_every, write=group.is_main)
    group.on_main(checkpoints.load)  # rank 0 first: it repairs a checkpoint a kill left half-replaced
    if not group.is_main:
        checkpoints.load()
    run = run if group.is_main else None
    if run is not None:
        run.set_status("running", resumed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    with _guarded(run, created_here=False):
        return _train_and_evaluate(config, task, run, progress, backbone, checkpoints)


def _guarded(run: RunFolder | None, created_here: bool = True):
    return guarded(run, created_here) if run is not None else nullcontext()


def _train_and_evaluate(config, task, run, progress, backbone, checkpoints=None) -> RunResult:
    progress = progress and processes().is_main  # one set of progress bars for a data-parallel run
    handler = _attach_log(run)
    try:
        method = build_method(config, task, backbone)
        trainer = Trainer(config.training, progress=progress, log=log.info, checkpoints=checkpoints)
        method.to(trainer.device)
        start = time.perf_counter()
        train_items = method.featurize(task.train, progress=progress)
        dev_items = method.featurize(task.dev, progress=progress) if task.dev else None
        # With a frozen body this is the encoding pass itself: part of what training costs.
        featurize_seconds = time.perf_counter() - start
        dev_targets = task.targets(task.dev) if task.dev else None
        result = recipes.fit(method, trainer, train_items, task.targets(task.train), dev_items, dev_targets)
        method.finalize()
        metrics = {"train": {**_train_summary(result), "featurize_seconds": featurize_seconds}}
        group = processes()
        if group.is_main:  # the other processes of a data-parallel run wait for rank 0's results
            metrics.update(_evaluate_splits(method, task, config, progress, run))
            metrics.update(_sizes(method))
            if run is not None:
                metrics["adapter_bytes"] = run.save_weights(method.trainable_state_dict())
                run.write_metrics(metrics)
                run.complete()
                checkpoints.remove()  # the adapter holds the result now
        metrics = group.broadcast(metrics)
        return RunResult(run.path if run else None, metrics, method)
    finally:
        _detach_log(handler)


def evaluate_untrained(config: RunConfig, progress: bool = True, backbone: Backbone | None = None) -> dict:
    """Zero-shot: evaluate a method as it is, without training (PET patterns, an untrained head)."""
    task = prepare_task(config)
    method_config, _ = validate(config, task)
    config, backbone, search = search_prompt(config, task, method_config, backbone, progress)
    method = build_method(config, task, backbone)
    method.to(resolve_device(config.training.device))
    method.finalize()
    metrics = _evaluate_splits(method, task, config, progress, None)
    if search is not None:
        metrics["prompt"] = chosen_prompt(search)
    return metrics


def _evaluate_splits(method: Tuned, task: Task, config: RunConfig, progress: bool, run: RunFolder | None) -> dict:
    out = {}
    for split in ("dev", "test"):
        examples = getattr(task, split)
        if not examples:
            continue
        start = time.perf_counter()
        split_metrics, scores = evaluate(method, examples, task.targets(examples), config.training.eval_batch_size, progress)
        seconds = time.perf_counter() - start
        out[split] = {**split_metrics, "examples": len(examples), "examples_per_second": len(examples) / seconds}
        log.info("%s %s", split, "  ".join(f"{k} {v:.4f}" for k, v in split_metrics.items()))
        if run is not None and (split == "test" or not task.test):
            run.write_predictions(prediction_rows(task, examples, scores))
    return out


def _train_summary(result) -> dict:
    return {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_dev": result.best_dev,
        "seconds": result.train_seconds,
        "examples_per_second": result.examples_per_second,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }


def _sizes(method: Tuned) -> dict:
    return {
        "trainable_parameters": method.trainable_parameter_count(),
        "total_parameters": sum(p.numel() for p in method.parameters()),
    }


def _saved_config(config: RunConfig, task: Task) -> dict:
    data = config.to_dict()
    data["task_info"] = {"name": task.name, "labels": task.labels, "metric": task.metric}
    data["pretune_version"] = __version__
    return data


# ---------------------------------------------------------------- predictions


def prediction_rows(task: Task, examples: list[Example], scores: torch.Tensor) -> list[dict]:
    rows = []
    if task.is_regression:
        for example, value in zip(examples, scores.view(-1).tolist()):
            rows.append(_row(example, prediction=value))
        return rows
    probabilities = scores.float().softmax(dim=-1)
    for example, probs in zip(examples, probabilities.tolist()):
        best = max(range(len(probs)), key=probs.__getitem__)
        rows.append(_row(example, prediction=task.labels[best], probabilities=dict(zip(task.labels, probs))))
    return rows


def _row(example: Example, **values) -> dict:
    row = {"text": example.text}
    if example.text_pair is not None:
        row["text_pair"] = example.text_pair
    if example.label is not None:
        row["label"] = example.label
    row.update(values)
    return row


class Predictor:
    """A trained run, reloaded: labels new examples with probabilities."""

    def __init__(self, method: Tuned, config: RunConfig, folder: Path):
        self.method, self.config, self.folder = method, config, folder

    @property
    def task(self) -> Task:
        return self.method.task

    def scores(self, examples: list[Example], progress: bool = False) -> torch.Tensor:
        return self.method.label_scores(examples, self.config.training.eval_batch_size, progress)

    def predict(self, examples: list[Example], progress: bool = False) -> list[dict]:
        return prediction_rows(self.task, examples, self.scores(examples, progress))


def load_run(folder: str | Path, device: str = "auto") -> Predictor:
    """Rebuild a completed run's method from its config.yaml and adapter weights."""
    run = open_completed(folder)
    saved = run.read_config()
    config = config_from_dict(saved)
    info = saved["task_info"]
    task = Task(name=info["name"], labels=info["labels"], metric=info["metric"])
    method = build_method(config, task)
    method.load_trainable_state_dict(run.load_weights())
    method.to(resolve_device(device)).eval()
    return Predictor(method, config, run.path)


def config_from_dict(data: dict) -> RunConfig:
    data = dict(data)
    data.pop("task_info", None)
    data.pop("pretune_version", None)
    training = TrainConfig(**data.pop("training", {}))
    return RunConfig(training=training, **data)


# ---------------------------------------------------------------- logging to the run folder


def _attach_log(run: RunFolder | None):
    if run is None:
        return None
    handler = logging.FileHandler(run.log_file(), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _detach_log(handler) -> None:
    if handler is not None:
        log.removeHandler(handler)
        handler.close()
