"""The one training loop for every method.

A method maps a batch to label scores; here that becomes cross-entropy (soft targets for
distillation, MSE for regression), AdamW over the method's parameter groups (each role's rate and
weight decay from the configuration, see `optimizer_groups`), a warmup-then-decay schedule
(`schedule`), gradient accumulation and clipping, evaluation on dev every N steps, the best state
kept by the task's metric, and early stopping. A recipe (`recipes`) calls `fit` once per stage it
trains, naming the stage, so a resumed run knows which stages it had finished. The model, optimizer,
backward and gradient exchange go through accelerate (`engine`); each step and evaluation is
reported as it happens (`tracking`).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import Task
from ..errors import UserError
from ..methods.base import OWN_ROLES, Method
from .checkpoint import Checkpointer, Snapshot, restore_rng, rng_state
from .config import TrainConfig, TrainResult
from .engine import Engine, processes
from .evaluation import task_metrics
from .packing import cut_by_length
from .schedule import learning_rate_schedule, warmup_steps
from .tracking import TRACKING, Reporter


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: no Apple GPU (MPS) is available on this machine")
    return torch.device(name)


# ---------------------------------------------------------------- losses and targets


def target_tensor(task: Task, targets: list) -> torch.Tensor:
    """Label indices, float regression targets, or soft label distributions (rows of floats)."""
    if task.is_regression:
        return torch.tensor(targets, dtype=torch.float32)
    if targets and isinstance(targets[0], (list, tuple, np.ndarray, torch.Tensor)):
        return torch.as_tensor(np.asarray(targets, dtype=np.float32))
    return torch.tensor(targets, dtype=torch.long)


def loss_fn(task: Task, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    scores = scores.float()
    if task.is_regression:
        return F.mse_loss(scores.view(-1), targets.view(-1))
    return F.cross_entropy(scores, targets)  # float targets are soft labels (a distribution per row)


def optimizer_groups(method: Method, config: TrainConfig) -> list[dict]:
    """AdamW parameter groups, one per role the method names: its own parameters (head, prompt) at
    `--lr`, the body at `--body-lr` (each the method's default when not given), weight decay
    `--weight-decay` everywhere but on the body's biases and norms."""
    rates = method.config.default_rates(method.body_training)
    groups = []
    for role, params in method.parameter_groups().items():
        if not params:
            continue
        own = role in OWN_ROLES
        rate = (config.lr or rates.own) if own else (config.body_lr or rates.body)
        decay = 0.0 if role == "no_decay" else config.weight_decay
        groups.append({"name": role, "params": params, "lr": rate, "weight_decay": decay})
    return groups


# ---------------------------------------------------------------- the loop


class BatchOrder:
    """Shuffled batches of example indices, epoch after epoch. Its state goes into checkpoints, so a
    resumed run draws exactly the batches the interrupted one would have drawn."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size = size, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0

    def next(self) -> list[int]:
        if self.position >= len(self.order):
            self.order, self.position = torch.randperm(self.size, generator=self.generator).tolist(), 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        order = torch.tensor(self.order, dtype=torch.long)
        return {"generator": self.generator.get_state(), "order": order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].tolist(), state["position"]


@dataclass
class LoopState:
    """The loop's counters and history: what a checkpoint holds besides weights, optimizer and RNGs."""

    step: int = 0
    seen: int = 0  # training examples seen (all processes together)
    losses: list[float] = field(default_factory=list)  # one per step
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    best_metric: float = -math.inf
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement
    seconds: float = 0.0  # training time (checkpoint writing aside), summed over a run and its resumptions
    stopped_early: bool = False


class Trainer:
    """Trains a method's parameters on featurized items; keeps the state that did best on dev.

    With `checkpoints`, the trainer writes a checkpoint every few steps and at the end of each
    `fit` (one per stage of a recipe, keyed by the stage the recipe names), and continues from the
    checkpoint it was given. Under a multi-process launcher it trains on every process, the way the
    accelerate config says (see `engine`)."""

    def __init__(self, config: TrainConfig, progress: bool = True, log=print, checkpoints: Checkpointer | None = None):
        config.validate()
        self.method: Method | None = None  # the method the current `fit` trains
        self.extra_loss = None  # and the extra loss it adds at every micro-batch
        self.config = config
        self.processes = processes()
        self.progress = progress and self.processes.is_main
        self.log = (log if self.processes.is_main else None) or (lambda *_: None)
        self.device = self.processes.device(resolve_device(config.device))
        self.checkpoints = checkpoints
        if checkpoints is not None and checkpoints.config is not None and _with_defaults(checkpoints.config) != self._options():
            raise UserError(
                f"{checkpoints.folder} was written with other training options than {checkpoints.run_folder}/config.yaml;"
                " resume with the configuration the run started with"
            )
        self.engine, self.reporter = _engine_and_reporter(config, checkpoints)

    def _options(self) -> dict:
        """The training options a checkpoint must agree with (where it runs, how often it saves aside
        and where it reports aside)."""
        options = self.config.to_dict()
        for name in ("device", "checkpoint_every", "report_to"):
            options.pop(name)
        return options

    def close(self) -> None:
        """End the trackers' run (after the last stage)."""
        self.reporter.close()

    def _optimizer(self):
        groups = optimizer_groups(self.method, self.config)
        if not groups:
            raise UserError(f"method '{self.method.name}' has no trainable parameters with this configuration")
        return torch.optim.AdamW(groups)

    def _total_steps(self, n_train: int) -> int:
        if self.config.steps is not None:
            return self.config.steps
        per_epoch = math.ceil(n_train / (self.config.batch_size * self.config.grad_accum))
        return max(1, math.ceil(per_epoch * self.config.epochs))

    def fit(self, method: Method, train_items: list, train_targets: list, dev_items=None, dev_targets=None,
            stage: int = 0, extra_loss=None) -> TrainResult:
        """Train `method` on items; `stage` names this training in the checkpoints (a recipe's
        stage: an ensemble member, distillation); `extra_loss()`, if given, is added at every
        micro-batch (PET's auxiliary LM loss)."""
        self.method, self.extra_loss = method, extra_loss
        config, task = self.config, method.task
        if not train_items:
            raise UserError("no training examples")
        finished = self.checkpoints.finished_phase(stage) if self.checkpoints else None
        if finished is not None:
            return self._finished_phase(*finished)
        set_seed(config.seed)
        method.to(self.device)
        optimizer = self._optimizer()
        total = self._total_steps(len(train_items))
        scheduler = learning_rate_schedule(config.lr_scheduler, optimizer, warmup_steps(config.warmup_ratio, total), total)
        per_epoch = math.ceil(len(train_items) / (config.batch_size * config.grad_accum))
        eval_every = config.eval_every or max(per_epoch, math.ceil(total / 10))
        targets_all = target_tensor(task, train_targets)
        batches = BatchOrder(len(train_items), config.batch_size, config.seed)

        snapshot = self.checkpoints.resume(stage) if self.checkpoints else None
        if snapshot is not None:
            loop, best_state = self._restore(snapshot, scheduler, batches)
        else:
            loop, best_state = LoopState(), None
        # In a group every process starts from rank 0's weights (DDP broadcasts them as it wraps).
        model, optimizer = self.engine.prepare(method, optimizer)
        if snapshot is not None:  # once prepared: sharded, each process takes its slices of the moments
            self.engine.load_optimizer_state(optimizer, snapshot.optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if snapshot is None and dev_items and (method.start_is_usable if config.eval_start is None else config.eval_start):
            best_state = self._evaluation(stage, loop, eval_every, dev_items, dev_targets, best_state)
        method.train()
        start = time.perf_counter()
        desc = f"training {method.name}" + (f", stage {stage}" if stage else "")  # a recipe's later stages named
        bar = tqdm(total=total, initial=loop.step, desc=desc, unit="step", disable=not self.progress)
        while loop.step < total:
            step_loss = self._step(model, optimizer, params, batches, train_items, targets_all, loop)
            rates = {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}
            scheduler.step()
            loop.step += 1
            loop.losses.append(step_loss)
            self.reporter.step(stage, loop.step, step_loss, rates)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if loop.step % eval_every == 0 or loop.step == total:
                best_state = self._evaluation(stage, loop, eval_every, dev_items, dev_targets, best_state)
                if config.patience is not None and loop.bad_evals >= config.patience:
                    loop.stopped_early = True
                    break
            if self.checkpoints and loop.step < total and self.checkpoints.due(loop.step, eval_every):
                paused = time.perf_counter()
                self._checkpoint(stage, loop, loop.seconds + paused - start, best_state, optimizer, scheduler, batches)
                start += time.perf_counter() - paused  # the clock times training, not writing checkpoints
        bar.close()
        loop.seconds += time.perf_counter() - start
        self.engine.release(method)  # a sharded method is whole again from here on
        if best_state is not None:
            method.load_trainable_state_dict(best_state)
        method.eval()
        result = TrainResult(
            steps=loop.step,
            best_step=loop.best_step if dev_items else loop.step,
            best_dev=loop.best_metric if dev_items else None,
            history=loop.history,
            train_seconds=loop.seconds,
            examples_per_second=loop.seen / loop.seconds if loop.seconds > 0 else 0.0,
            stopped_early=loop.stopped_early,
        )
        if self.checkpoints:
            self.checkpoints.finish_phase(stage, method.trainable_state_dict(), asdict(result), self._options())
        return result

    def _step(self, model, optimizer, params, batches: BatchOrder, items, targets, loop: LoopState) -> float:
        """One optimizer step over `grad_accum` micro-batches, each process on its shard of them;
        returns the step's loss (the mean over all processes)."""
        config, method, task = self.config, self.method, self.method.task
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(config.grad_accum):
            indices = batches.next()
            mine = self.processes.shard(indices)
            loop.seen += len(indices)
            # Weighted by this shard's part of the batch: the processes' average is then the batch mean.
            weight = len(mine) * self.processes.world_size / len(indices)
            # A batch smaller than the number of processes leaves this one no example: it still takes
            # part in the gradient exchange, with one example at weight 0.
            mine = mine or indices[:1]
            # One process: the micro-batch may run as parts of similar length (`packing`); under DDP every
            # backward pass is a gradient exchange, so there it runs whole.
            parts = cut_by_length(method, mine, items) if self.processes.world_size == 1 else [mine]
            with self.engine.micro_batch(model):
                for number, part in enumerate(parts):
                    batch = method.collate([items[i] for i in part]).to(self.device)
                    with method.autocast():  # the forward passes only; the loss is float32, backward outside
                        scores = model(batch)
                        auxiliary = self.extra_loss() if self.extra_loss is not None and number == 0 else None
                    loss = loss_fn(task, scores, targets[part].to(self.device)) * (len(part) / len(mine))
                    if auxiliary is not None:  # once per micro-batch, however it was cut
                        loss = loss + auxiliary.float()
                    loss = loss * weight
                    self.engine.backward(loss)  # of loss / grad_accum: the step's mean over its micro-batches
                    step_loss += (loss.detach() / config.grad_accum).item()
        step_loss = self.processes.mean(step_loss)
        if not math.isfinite(step_loss):
            raise self._diverged("loss", step_loss, loop.step + 1)
        norm = self.engine.clip(params, config.max_grad_norm or math.inf)
        if not math.isfinite(norm):  # checked before the update: the weights stay those of the last good step
            raise self._diverged("gradient norm", norm, loop.step + 1)
        optimizer.step()
        return step_loss

    def _diverged(self, what: str, value: float, step: int) -> UserError:
        kept = ""
        if self.checkpoints and self.checkpoints.step is not None:
            kept = f"; the last good checkpoint (step {self.checkpoints.step}) stays in {self.checkpoints.folder}"
        return UserError(f"training diverged: the {what} became {value} at step {step}{kept}; try a lower --lr")

    def _evaluation(self, stage: int, loop: LoopState, eval_every: int, dev_items, dev_targets, best_state):
        """A history row (mean loss since the last one, none at step 0; dev metrics); keeps the best state so far."""
        row = {"step": loop.step, **({"loss": float(np.mean(loop.losses[-eval_every:]))} if loop.losses else {})}
        if dev_items:
            metric = self.method.task.metric
            dev_metrics = self._evaluate(dev_items, dev_targets)
            self.method.train()
            row.update({f"dev_{k}": v for k, v in dev_metrics.items()})
            if dev_metrics[metric] > loop.best_metric:
                loop.best_metric, loop.best_step, loop.bad_evals = dev_metrics[metric], loop.step, 0
                best_state = {k: v.to("cpu", copy=True) for k, v in self.engine.trainable_state(self.method).items()}
            else:
                loop.bad_evals += 1
        loop.history.append(row)
        self.reporter.evaluation(stage, row)
        self.log(_format_row(row))
        return best_state

    def _evaluate(self, items: list[dict], targets: list) -> dict:
        """Dev metrics; with several processes each scores its shard and all see the same numbers.
        A sharded model gathers its weights in every forward pass, so there every process scores all
        the items: the processes must run the same passes."""
        batch_size = self.config.eval_batch_size
        if not self.processes.is_distributed or self.engine.sharded:
            return task_metrics(self.method.task, self.method.score_items(items, batch_size), targets)
        mine = self.processes.shard(list(range(len(items))))
        parts = self.processes.gather(self.method.score_items([items[i] for i in mine], batch_size))
        scores = torch.empty(len(items), parts[0].shape[-1])
        for rank, part in enumerate(parts):
            scores[rank :: self.processes.world_size] = part
        return task_metrics(self.method.task, scores, targets)

    # -- checkpoints ------------------------------------------------------------------------
    def _checkpoint(self, stage: int, loop: LoopState, seconds: float, best_state, optimizer, scheduler, batches) -> None:
        snapshot = Snapshot(
            phase=stage,
            loop={**asdict(loop), "seconds": seconds},
            weights=self.engine.trainable_state(self.method),
            best=best_state,
            optimizer=self.engine.optimizer_state(optimizer),
            scheduler=scheduler.state_dict(),
            rng={**rng_state(), "batches": batches.state_dict()},
        )
        self.checkpoints.save(snapshot, self._options())

    def _restore(self, snapshot: Snapshot, scheduler, batches: BatchOrder):
        """Everything but the optimizer's state, which goes into the prepared optimizer (see `fit`)."""
        self.method.load_trainable_state_dict(snapshot.weights)
        scheduler.load_state_dict(snapshot.scheduler)
        batches.load_state_dict(snapshot.rng["batches"])
        restore_rng(snapshot.rng)
        loop = LoopState(**snapshot.loop)
        self.log(f"resumed at step {loop.step} from {self.checkpoints.folder}")
        return loop, snapshot.best

    def _finished_phase(self, weights: dict, result: dict) -> TrainResult:
        """A stage the interrupted run had finished: its final weights and result, no training."""
        self.method.to(self.device)
        self.method.load_trainable_state_dict(weights)
        self.method.eval()
        return TrainResult(**result)


def _engine_and_reporter(config: TrainConfig, checkpoints: Checkpointer | None) -> tuple[Engine, Reporter]:
    """The accelerate engine, its `--report-to` trackers writing into RUN/tracking, and the reporter
    that also appends history.jsonl (on the process that writes the run folder)."""
    folder = checkpoints.run_folder if checkpoints is not None else None
    tracker = None if config.report_to == "none" else config.report_to
    if tracker is not None and folder is None:
        raise UserError(f"--report-to {tracker}: the trackers write into the run folder; give --out")
    engine = Engine(config.grad_accum, tracker, folder / TRACKING if tracker is not None else None)
    history = folder if folder is not None and checkpoints.write else None
    return engine, Reporter(engine.accelerator, history, config.report_to, config.to_dict(), _resume_point(checkpoints))


def _with_defaults(options: dict) -> dict:
    """A checkpoint's training options, with the defaults of those added since it was written."""
    return {"lr_scheduler": "linear", "eval_start": None, **options}


def _resume_point(checkpoints: Checkpointer | None) -> tuple[int, int] | None:
    """(stage, step) the run continues from: the checkpoint's; None for a run starting afresh."""
    if checkpoints is None or checkpoints.step is None:
        return None
    if checkpoints.pending is not None:
        return checkpoints.pending.phase, checkpoints.pending.loop["step"]
    return len(checkpoints.finished), 0


def _format_row(row: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
