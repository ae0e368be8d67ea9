"""The training loop checked by value, not by "it runs": every number below is computed by hand
(or by plain autograd outside the trainer) and the trainer must reproduce it.

Two instruments:
- `recorded`: AdamW replaced by a subclass that records, at every optimizer step, each parameter
  group's learning rate and weight decay and the gradients it is about to apply (after
  accumulation and clipping). The trainer builds its optimizer as `torch.optim.AdamW`.
- `Scripted`: a method whose dev metric follows a script (one accuracy per evaluation, dev separate
  from train), so the evaluation that must win, and the weights that must come back, are known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretune.batches import Batch
from pretune.data import Task
from pretune.methods import HeadConfig, HeadMethod
from pretune.methods.base import Method, MethodConfig, Rates
from pretune.training.engine import Processes
from pretune.training.trainer import BatchOrder, TrainConfig, Trainer, set_seed
from pretune.tuning import BodyTraining

ADAM_EPS = 1e-8  # torch's AdamW default, which the trainer keeps


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that writes down what each step is about to do."""

    log: list[dict] = []

    def step(self, closure=None):
        RecordingAdamW.log.append({
            "lr": [g["lr"] for g in self.param_groups],
            "weight_decay": [g["weight_decay"] for g in self.param_groups],
            "names": [g.get("name") for g in self.param_groups],
            "params": [list(g["params"]) for g in self.param_groups],
            "grads": [[None if p.grad is None else p.grad.detach().clone() for p in g["params"]] for g in self.param_groups],
        })
        return super().step(closure)


@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    RecordingAdamW.log = []
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return RecordingAdamW.log


def group_of(step: dict, param: torch.Tensor) -> int:
    """Index of the parameter group holding `param` in a recorded step."""
    return next(i for i, params in enumerate(step["params"]) if any(p is param for p in params))


def grad_of(step: dict, param: torch.Tensor) -> torch.Tensor:
    group = group_of(step, param)
    position = next(i for i, p in enumerate(step["params"][group]) if p is param)
    return step["grads"][group][position]


# ---------------------------------------------------------------- a linear head on cached features


def linear_head(backbone, task, training: str = "frozen") -> HeadMethod:
    """A head method whose only trainable parameters (frozen body) are one linear layer, no dropout."""
    set_seed(42)
    return HeadMethod(backbone, task, HeadConfig(dropout=0.0), BodyTraining.parse(training))


def train_head(method, task, **options):
    items = method.featurize(task.train, progress=False)
    defaults = {"warmup_ratio": 0.0, "max_grad_norm": None, "lr": 0.1}
    config = TrainConfig(**{**defaults, **options})
    result = Trainer(config, progress=False, log=None).fit(method, items, task.targets(task.train))
    return items, result


def full_batch_loss_and_grads(method, items, targets):
    """Cross-entropy of the linear head over all examples and its gradients, by plain autograd."""
    linear = method.head[-1]
    weight = linear.weight.detach().clone().requires_grad_(True)
    bias = linear.bias.detach().clone().requires_grad_(True)
    features = torch.stack([item["features"] for item in items])
    loss = F.cross_entropy(features @ weight.T + bias, torch.tensor(targets))
    loss.backward()
    return loss.item(), weight.grad, bias.grad


def test_gradient_accumulation_averages_micro_batches_into_the_full_batch_gradient(tiny_encoder, task, recorded):
    """8 examples, 2 micro-batches of 4, one step: the step sees every example once, so its gradient
    and loss must be those of the mean loss over all 8 (not the sum of two micro-batch means)."""
    method = linear_head(tiny_encoder, task)
    items = method.featurize(task.train, progress=False)
    loss, weight_grad, bias_grad = full_batch_loss_and_grads(method, items, task.targets(task.train))
    _, result = train_head(method, task, steps=1, batch_size=4, grad_accum=2)
    step = recorded[0]
    assert torch.allclose(grad_of(step, method.head[-1].weight), weight_grad, atol=1e-6)
    assert torch.allclose(grad_of(step, method.head[-1].bias), bias_grad, atol=1e-6)
    assert result.history[0]["loss"] == pytest.approx(loss, abs=1e-6)


def test_one_batch_of_eight_and_four_micro_batches_of_two_give_the_same_step(tiny_encoder, task, recorded):
    first = linear_head(tiny_encoder, task)
    train_head(first, task, steps=1, batch_size=8, grad_accum=1)
    second = linear_head(tiny_encoder, task)
    train_head(second, task, steps=1, batch_size=2, grad_accum=4)
    assert len(recorded) == 2
    assert torch.allclose(grad_of(recorded[0], first.head[-1].weight), grad_of(recorded[1], second.head[-1].weight), atol=1e-6)
    assert torch.allclose(first.head[-1].weight, second.head[-1].weight, atol=1e-6)


def test_gradients_are_clipped_to_max_grad_norm_keeping_their_direction(tiny_encoder, task, recorded):
    method = linear_head(tiny_encoder, task)
    items = method.featurize(task.train, progress=False)
    _, weight_grad, bias_grad = full_batch_loss_and_grads(method, items, task.targets(task.train))
    unclipped = torch.cat([weight_grad.flatten(), bias_grad]).norm().item()
    limit = unclipped / 10
    train_head(method, task, steps=1, batch_size=8, max_grad_norm=limit)
    applied = grad_of(recorded[0], method.head[-1].weight)
    applied_bias = grad_of(recorded[0], method.head[-1].bias)
    assert torch.cat([applied.flatten(), applied_bias]).norm().item() == pytest.approx(limit, rel=1e-4)
    assert torch.allclose(applied, weight_grad / 10, atol=1e-7)


def test_no_clipping_when_max_grad_norm_is_none_or_above_the_norm(tiny_encoder, task, recorded):
    method = linear_head(tiny_encoder, task)
    items = method.featurize(task.train, progress=False)
    _, weight_grad, _ = full_batch_loss_and_grads(method, items, task.targets(task.train))
    train_head(method, task, steps=1, batch_size=8, max_grad_norm=None)
    again = linear_head(tiny_encoder, task)
    train_head(again, task, steps=1, batch_size=8, max_grad_norm=1e6)
    assert torch.allclose(grad_of(recorded[0], method.head[-1].weight), weight_grad, atol=1e-7)
    assert torch.allclose(grad_of(recorded[1], again.head[-1].weight), weight_grad, atol=1e-7)


def test_warmup_then_linear_decay_learning_rates_step_by_step(tiny_encoder, task, recorded):
    """steps 4, warmup ratio 0.5 -> 2 warmup steps: rates lr/3, 2lr/3, then lr, lr/2 (to 0 after the last)."""
    method = linear_head(tiny_encoder, task)
    train_head(method, task, steps=4, batch_size=8, lr=0.3, warmup_ratio=0.5)
    head = group_of(recorded[0], method.head[-1].weight)
    assert [step["lr"][head] for step in recorded] == pytest.approx([0.1, 0.2, 0.3, 0.15])


def test_no_warmup_starts_at_the_full_rate_and_decays_linearly(tiny_encoder, task, recorded):
    method = linear_head(tiny_encoder, task)
    train_head(method, task, steps=5, batch_size=8, lr=0.5, warmup_ratio=0.0)
    head = group_of(recorded[0], method.head[-1].weight)
    assert [step["lr"][head] for step in recorded] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])


def test_head_lr_and_body_lr_reach_their_own_parameter_groups(tiny_encoder, task, recorded):
    method = linear_head(tiny_encoder, task, training="last:1")
    train_head(method, task, steps=1, batch_size=8, lr=0.05, body_lr=0.003)
    step = recorded[0]
    body_param = next(p for p in method.model.parameters() if p.requires_grad and p.ndim == 2)
    assert step["lr"][group_of(step, method.head[-1].weight)] == pytest.approx(0.05)
    assert step["lr"][group_of(step, body_param)] == pytest.approx(0.003)


def test_adamw_first_step_by_hand(tiny_encoder, task, recorded):
    """First AdamW step: w1 = w0 (1 - lr wd) - lr g / (|g| + eps), with wd the group's own decay."""
    method = linear_head(tiny_encoder, task)
    start = method.head[-1].weight.detach().clone()
    train_head(method, task, steps=1, batch_size=8, lr=0.1)
    step = recorded[0]
    decay = step["weight_decay"][group_of(step, method.head[-1].weight)]
    g = grad_of(step, method.head[-1].weight)
    expected = start * (1 - 0.1 * decay) - 0.1 * g / (g.abs() + ADAM_EPS)
    assert torch.allclose(method.head[-1].weight, expected, atol=1e-6)


def test_weight_decay_option_reaches_the_optimizer_and_the_update(tiny_encoder, task, recorded):
    method = linear_head(tiny_encoder, task)
    start = method.head[-1].weight.detach().clone()
    train_head(method, task, steps=1, batch_size=8, lr=0.1, weight_decay=0.3)
    step = recorded[0]
    assert step["weight_decay"][group_of(step, method.head[-1].weight)] == 0.3
    g = grad_of(step, method.head[-1].weight)
    expected = start * (1 - 0.1 * 0.3) - 0.1 * g / (g.abs() + ADAM_EPS)
    assert torch.allclose(method.head[-1].weight, expected, atol=1e-6)


# ---------------------------------------------------------------- scripted dev metrics


def scripted_task() -> Task:
    from conftest import sentiment_task

    task = sentiment_task()
    task.dev = task.train[:2] + task.train[4:6]  # targets 1, 1, 0, 0: not the training set
    return task


@dataclass
class ScriptedBatch(Batch):
    index: torch.Tensor
    dev: bool


@dataclass
class ScriptedConfig(MethodConfig):
    def default_rates(self, training) -> Rates:
        return Rates(own=0.1, body=0.1)


class Scripted(Method):
    """A method with one trainable vector. On training items it is a real model (the loss trains the
    vector); on dev items its accuracy follows the script, one value per evaluation, and it records
    the weights each evaluation saw."""

    name = "scripted"

    def __init__(self, task: Task, script: list[float]):
        nn.Module.__init__(self)  # no backbone: the method is its one vector
        self.task, self.config, self.body_training = task, ScriptedConfig(), BodyTraining.parse("frozen")
        self.weight = nn.Parameter(torch.zeros(2))
        self.script = list(script)
        self.seen: list[torch.Tensor] = []  # the weights at each evaluation
        self.dev_targets = task.targets(task.dev)

    def train(self, mode: bool = True):
        return nn.Module.train(self, mode)

    def featurize(self, examples, progress=False):
        return [{"index": i} for i, _ in enumerate(examples)]

    def item_length(self, item) -> int:
        return 1

    def collate(self, items):
        return ScriptedBatch(torch.tensor([item["index"] for item in items]), dev=not self.training)

    def forward(self, batch):
        if not batch.dev:
            return self.weight.unsqueeze(0) * (1.0 + batch.index.float()).unsqueeze(1)
        accuracy = self.script[len(self.seen)]
        self.seen.append(self.weight.detach().clone())
        right = round(accuracy * len(self.dev_targets))
        targets = torch.tensor(self.dev_targets)[batch.index]
        predicted = torch.where(batch.index < right, targets, 1 - targets)
        return F.one_hot(predicted, 2).float()

    def parameter_groups(self):
        return {"head": [self.weight]}


def run_script(script: list[float], steps: int, patience: int | None = None):
    task = scripted_task()
    method = Scripted(task, script)
    config = TrainConfig(steps=steps, batch_size=4, lr=0.1, eval_every=1, patience=patience, warmup_ratio=0.0)
    train_items = method.featurize(task.train)
    dev_items = method.featurize(task.dev)
    result = Trainer(config, progress=False, log=None).fit(
        method, train_items, task.targets(task.train), dev_items, task.targets(task.dev)
    )
    return method, result


def test_dev_sequence_scripts_the_accuracies_the_trainer_records():
    method, result = run_script([0.25, 0.75, 0.5, 0.25], steps=4)
    assert [row["dev_accuracy"] for row in result.history] == [0.25, 0.75, 0.5, 0.25]
    assert len(method.seen) == 4 and not torch.equal(method.seen[1], method.seen[3])


def test_best_dev_state_is_restored_not_the_last_one():
    method, result = run_script([0.25, 0.75, 0.5, 0.25], steps=4)
    assert result.best_step == 2 and result.best_dev == 0.75
    assert torch.equal(method.weight.detach(), method.seen[1])  # the weights evaluation 2 saw
    assert not torch.equal(method.weight.detach(), method.seen[3])


def test_a_tie_does_not_replace_the_best_state():
    method, result = run_script([0.5, 0.75, 0.75, 0.25], steps=4)
    assert result.best_step == 2
    assert torch.equal(method.weight.detach(), method.seen[1])


def test_a_later_strict_improvement_replaces_the_best_state():
    method, result = run_script([0.5, 0.75, 0.25, 1.0], steps=4)
    assert result.best_step == 4 and result.best_dev == 1.0
    assert torch.equal(method.weight.detach(), method.seen[3])


def test_early_stopping_after_patience_evaluations_without_improvement():
    method, result = run_script([0.5, 0.75, 0.5, 0.75, 1.0, 1.0], steps=6, patience=2)
    assert result.stopped_early and result.steps == 4 and len(method.seen) == 4
    assert result.best_step == 2
    assert torch.equal(method.weight.detach(), method.seen[1])


def test_patience_one_stops_at_the_first_evaluation_without_improvement():
    _, result = run_script([0.5, 0.5, 1.0], steps=3, patience=1)
    assert result.stopped_early and result.steps == 2


def test_an_improvement_resets_the_patience_count():
    _, result = run_script([0.25, 0.25, 0.5, 0.25, 0.75, 0.25, 0.25], steps=7, patience=2)
    assert result.stopped_early and result.steps == 7 and result.best_step == 5


def test_without_patience_training_runs_every_step():
    method, result = run_script([0.5, 0.25, 0.25, 0.25, 0.25], steps=5)
    assert not result.stopped_early and result.steps == 5 and len(method.seen) == 5
    assert result.best_step == 1 and torch.equal(method.weight.detach(), method.seen[0])


def test_history_loss_is_the_mean_of_the_steps_since_the_last_evaluation():
    """Scripted training loss by hand: scores w * (1 + i), w starts at zero: step 1's loss is log 2."""
    _, result = run_script([0.5, 0.5], steps=2)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_divergence_names_the_step_and_the_cure_in_one_line(tiny_encoder, task):
    from pretune.errors import UserError

    method = linear_head(tiny_encoder, task)
    items = method.featurize(task.train, progress=False)
    for item in items:  # a non-finite input: an infinite --lr, the old trigger, is now refused up front
        item["features"] = torch.full_like(item["features"], float("nan"))
    trainer = Trainer(TrainConfig(steps=3, batch_size=8, warmup_ratio=0.0, lr=0.1), progress=False, log=None)
    with pytest.raises(UserError) as error:
        trainer.fit(method, items, task.targets(task.train))
    assert str(error.value) in {
        f"training diverged: the {what} became {value} at step {step}; try a lower --lr"
        for what in ("loss", "gradient norm") for value in ("nan", "inf") for step in (1, 2, 3)
    }


class InfiniteSlope(Scripted):
    """Training scores sqrt(weight) with the weight at 0: a finite loss (log 2) whose gradient is not."""

    def forward(self, batch):
        if batch.dev:
            return super().forward(batch)
        return torch.sqrt(self.weight).unsqueeze(0).expand(len(batch.index), 2)


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_a_non_finite_gradient_under_a_finite_loss_stops_training_before_the_update(max_grad_norm):
    from pretune.errors import UserError

    task = scripted_task()
    method = InfiniteSlope(task, script=[])
    config = TrainConfig(steps=3, batch_size=4, lr=0.1, warmup_ratio=0.0, max_grad_norm=max_grad_norm)
    with pytest.raises(UserError) as error:
        Trainer(config, progress=False, log=None).fit(method, method.featurize(task.train), task.targets(task.train))
    assert str(error.value) == "training diverged: the gradient norm became nan at step 1; try a lower --lr"
    assert torch.equal(method.weight.detach(), torch.zeros(2))  # the step that met it was not applied


# ---------------------------------------------------------------- one process's part of a group's step


class RankOfTwo(Processes):
    """This process as rank `rank` of a group of 2, run alone: the other rank reports the same loss."""

    def __init__(self, rank: int):
        super().__init__(rank=rank, world_size=2)

    def gather(self, value) -> list:
        return [value, value]


def grads_on_rank(method, task, rank: int, batch_size: int, recorded) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight and bias gradients one step of `batch_size` gives this rank of 2."""
    items = method.featurize(task.train, progress=False)
    trainer = Trainer(TrainConfig(steps=1, batch_size=batch_size, warmup_ratio=0.0, max_grad_norm=None, lr=0.1),
                      progress=False, log=None)
    trainer.processes = RankOfTwo(rank)
    trainer.fit(method, items, task.targets(task.train))
    return grad_of(recorded[-1], method.head[-1].weight), grad_of(recorded[-1], method.head[-1].bias)


def test_each_process_trains_on_its_shard_weighted_so_that_their_average_is_the_batch_mean(tiny_encoder, task, recorded):
    """A batch of 3 over 2 processes: rank 0 takes examples 0 and 2 of it, rank 1 example 1; each
    process's gradient is its shard's mean times its share of the batch times 2, so the average DDP
    takes is the gradient of the whole batch's mean loss."""
    items = linear_head(tiny_encoder, task).featurize(task.train, progress=False)
    targets = task.targets(task.train)
    batch = BatchOrder(len(items), 3, TrainConfig().seed).next()
    print("the batch of 3:", batch)

    def mean_grads(indices):
        _, weight, bias = full_batch_loss_and_grads(linear_head(tiny_encoder, task), [items[i] for i in indices],
                                                    [targets[i] for i in indices])
        return weight, bias

    rank_0 = grads_on_rank(linear_head(tiny_encoder, task), task, 0, 3, recorded)
    rank_1 = grads_on_rank(linear_head(tiny_encoder, task), task, 1, 3, recorded)
    for mine, share, got in ((batch[0::2], 2 / 3, rank_0), (batch[1::2], 1 / 3, rank_1)):
        for expected, actual in zip(mean_grads(mine), got):
            torch.testing.assert_close(actual, 2 * share * expected, rtol=1e-5, atol=1e-7)
    for whole, part_0, part_1 in zip(mean_grads(batch), rank_0, rank_1):
        torch.testing.assert_close((part_0 + part_1) / 2, whole, rtol=1e-5, atol=1e-7)


def test_a_process_the_batch_leaves_without_an_example_adds_a_zero_gradient(tiny_encoder, task, recorded):
    """A batch of 1 over 2 processes: rank 1 has no example, yet takes part in the exchange (DDP waits
    for every process) with one example at weight 0."""
    weight, bias = grads_on_rank(linear_head(tiny_encoder, task), task, 1, 1, recorded)
    assert torch.count_nonzero(weight) == 0 and torch.count_nonzero(bias) == 0
    assert weight.shape == linear_head(tiny_encoder, task).head[-1].weight.shape  # a gradient was computed
