"""The main job as a Python API: configure a run, train it, evaluate it, predict with it.

    from pretune import RunConfig, train_run, load_run
    result = train_run(RunConfig(task="sst-2", model="smollm2-135m", method="head"), out="runs/sst2-head")
    predictor = load_run("runs/sst2-head")
    predictor.predict(["a gorgeous, witty film"])   # or (text, pair) tuples, dicts, Examples

The task may be a DataFrame, a datasets.Dataset / DatasetDict or a list of dicts (see `sources`).

The configuration and everything built from it (checks before any model loads) live in `run_config`.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .backbones import Backbone
from .data import Example, Task, check_labels
from .errors import UserError
from .methods import Method
from .precision import check_dtype
from .provenance import model_record
from .readers import Columns, read_examples

# The configuration's names are part of this API too (`from pretune.api import RunConfig`).
from .run_config import (  # noqa: F401
    PROMPT_SEARCH,
    RunConfig,
    Tuned,
    absolute_if_path,
    build_method,
    chosen_prompt,
    config_from_dict,
    prepare_task,
    search_prompt,
    validate,
)
from .runs import WEIGHTS, RunFolder, atomic_write_text, guarded, open_completed, open_resumable
from .sources import check_resumed_data, describe, examples_from, in_memory, inputs_to_examples, resumed_task
from .training import recipes
from .training.checkpoint import Checkpointer
from .training.engine import processes
from .training.evaluation import evaluate
from .training.trainer import Trainer, resolve_device

log = logging.getLogger("pretune")


@dataclass
class RunResult:
    folder: Path | None
    metrics: dict
    method: Tuned


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
            run.write_config(_saved_config(config, task, backbone))  # at the start: what `resume_run` reads
        result = _train_and_evaluate(config, task, run, progress, backbone, checkpoints)
    if search is not None:
        result.metrics["prompt"] = chosen_prompt(search)
    return result


def resume_run(
    folder: str | Path, progress: bool = True, device: str | None = None, backbone: Backbone | None = None,
    data=None,
) -> RunResult:
    """Continue an interrupted run (killed, crashed, stopped) from its newest checkpoint, with the
    configuration of its config.yaml; the result equals that of an uninterrupted run (on CPU).
    A run that stopped before its first checkpoint starts again from the beginning. A run trained
    on in-memory data needs that data again (`data`), checked against the hash the run recorded."""
    group = processes()
    run = open_resumable(folder, lock=group.is_main)  # one writer: a second one is refused here
    try:
        saved = run.read_config()
        config = config_from_dict(saved, run.path)
        config.task = resumed_task(saved, data, config.task, run.path)
        if device is not None:
            config.training.device = device
        task = prepare_task(config)
        check_resumed_data(saved, task, run.path)
        validate(config, task)
        checkpoints = Checkpointer(run.path, config.training.checkpoint_every, write=group.is_main)
        group.on_main(checkpoints.load)  # rank 0 first: it repairs a checkpoint a kill left half-replaced
        if not group.is_main:
            checkpoints.load()
        if group.is_main:
            run.remove_leftovers(finished=False)  # temporary files of the writes the kill interrupted
    except BaseException:
        run.release()
        raise
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
        try:
            result = recipes.fit(method, trainer, train_items, task.targets(task.train), dev_items, dev_targets)
        finally:
            trainer.close()  # the trackers' run ends with the training, finished or not
        method.finalize()
        metrics = {"train": {**_train_summary(result), "featurize_seconds": featurize_seconds},
                   "dtype": config.precision().name}
        group = processes()
        if group.is_main:  # the other processes of a data-parallel run wait for rank 0's results
            metrics.update(_evaluate_splits(method, task, config, progress, run))
            metrics.update(_sizes(method))
            if run is not None:
                metrics["adapter_bytes"] = run.save_weights(method.trainable_state_dict())
                run.write_metrics(metrics)
                run.complete()
                checkpoints.remove()  # the adapter holds the result now
                run.remove_leftovers(finished=True)
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
    summary = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_dev": result.best_dev,
        "seconds": result.train_seconds,
        "examples_per_second": result.examples_per_second,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }
    if result.generations:  # iPET's, per generation (training.ipet)
        summary["generations"] = result.generations
    return summary


def _sizes(method: Tuned) -> dict:
    return {
        "trainable_parameters": method.trainable_parameter_count(),
        "total_parameters": sum(p.numel() for p in method.parameters()),
    }


def _saved_config(config: RunConfig, task: Task, backbone: Backbone | None = None) -> dict:
    data = config.to_dict()
    if in_memory(config.task):  # no path to record: what the data was, to check it when resuming
        data["data_source"] = describe(config.task, task)
    else:  # Absolute paths: the run resumes from any directory.
        data["task"] = absolute_if_path(config.task)
    if data["method_options"].get("unlabelled"):
        data["method_options"]["unlabelled"] = absolute_if_path(data["method_options"]["unlabelled"])
    # The concrete format, so that resuming and loading the run compute as it did on any machine.
    precision = config.precision()
    data["dtype"], data["dtype_chosen"] = precision.name, precision.reason
    data["task_info"] = {"name": task.name, "labels": task.labels, "metric": task.metric}
    data["pretune_version"] = __version__
    data["model_source"] = model_record(config.model, backbone)
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

    @property
    def columns(self) -> Columns:
        return Columns(self.config.text_field, self.config.pair_field, self.config.label_field)

    def scores(self, inputs, progress: bool = False) -> torch.Tensor:
        """Label scores [N, C] of texts, (text, pair) tuples, dicts of columns or Examples."""
        examples = inputs_to_examples(inputs, self.columns)
        return self.method.label_scores(examples, self.config.training.eval_batch_size, progress)

    def predict(self, inputs, progress: bool = False) -> list[dict]:
        """One row per input (a text, a (text, pair) tuple, a dict of columns, an Example, or a list
        of them; a DataFrame or Dataset): the predicted label and each label's probability."""
        examples = inputs_to_examples(inputs, self.columns)
        return prediction_rows(self.task, examples, self.scores(examples, progress))

    __call__ = predict

    def evaluate(self, data, progress: bool = False) -> dict:
        """Metrics on labelled data: a data file, a DataFrame, a Dataset or a list of dicts."""
        if in_memory(data):
            examples = examples_from(data, self.columns, split="input")
        else:
            examples = read_examples(data, self.columns)
        check_labels(examples, self.task.labels, "input")
        metrics, _ = evaluate(self.method, examples, self.task.targets(examples),
                              self.config.training.eval_batch_size, progress)
        return {"examples": len(examples), **metrics}


def load_run(folder: str | Path, device: str = "auto", dtype: str | None = None) -> Predictor:
    """Rebuild a completed run's method from its config.yaml and adapter weights, both checked
    against the checksums the run recorded; it computes in the run's own number format unless
    `dtype` says otherwise. The model is the one config.yaml names: predict trusts a run folder as
    much as the model it points to."""
    with open_completed(folder) as run:
        saved = run.read_config()
        config = config_from_dict(saved, run.path)
        task = _saved_task(saved.get("task_info"), run.path / "config.yaml")
        state = run.load_weights()
    config.training.device = device
    if dtype is not None:
        check_dtype(dtype)
        config.dtype = dtype
    method = build_method(config, task)
    _load_adapter(method, state, run.path / WEIGHTS)
    method.to(resolve_device(device)).eval()
    return Predictor(method, config, run.path)


def _load_adapter(method: Method, state: dict, path: Path) -> None:
    """The weights must be exactly the method's trainable ones: none missing, none unknown, same shapes."""
    try:
        method.load_trainable_state_dict(state)
    except UserError as error:
        raise UserError(f"{path}: {error} (written for another method or configuration?)") from None
    missing = sorted(set(method.trainable_state_dict()) - set(state))
    if missing:
        raise UserError(f"{path}: no weights for {len(missing)} parameters, e.g. {missing[0]} (an incomplete adapter?)")


def _saved_task(info, where: Path) -> Task:
    if not isinstance(info, dict) or not isinstance(info.get("name"), str) or not isinstance(info.get("metric"), str):
        raise UserError(f"{where}: task_info must hold the task's name, labels and metric")
    labels = info.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise UserError(f"{where}: task_info labels must be two or more distinct names (or null for regression)")
    return Task(name=info["name"], labels=labels, metric=info["metric"])


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
