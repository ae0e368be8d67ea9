import pytest
import torch

from pretune.errors import UserError
from pretune.methods import HeadConfig, HeadMethod
from pretune.training.evaluation import evaluate
from pretune.training.trainer import TrainConfig, Trainer, loss_fn, resolve_device, set_seed, target_tensor
from pretune.tuning import BodyTraining


def fit(backbone, task, **config):
    set_seed(config.get("seed", 42))  # the head's initial weights come from the seed too
    method = HeadMethod(backbone, task, HeadConfig(), BodyTraining.parse("frozen"))
    items = method.featurize(task.train, progress=False)
    targets = task.targets(task.train)
    result = Trainer(TrainConfig(**config), progress=False, log=None).fit(method, items, targets, items, targets)
    return method, items, result


def test_loss_falls_and_best_dev_state_is_kept(tiny_causal, task):
    method, items, result = fit(tiny_causal, task, epochs=40, lr=5e-2, eval_every=2)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.best_dev == max(row["dev_accuracy"] for row in result.history)
    assert evaluate(method, task.train, task.targets(task.train))[0]["accuracy"] == result.best_dev


def test_same_seed_same_result_and_other_seed_differs(tiny_mlm, task):
    first = fit(tiny_mlm, task, steps=5, seed=3)[2].history
    second = fit(tiny_mlm, task, steps=5, seed=3)[2].history
    third = fit(tiny_mlm, task, steps=5, seed=4)[2].history
    assert first == second
    assert first != third


def test_early_stopping(tiny_mlm, task):
    _, _, result = fit(tiny_mlm, task, steps=200, lr=1e-9, eval_every=1, patience=3)
    assert result.stopped_early and result.steps < 200


def test_soft_targets_and_regression_losses(task):
    scores = torch.tensor([[2.0, 0.0]])
    hard = loss_fn(task, scores, target_tensor(task, [0]))
    soft = loss_fn(task, scores, target_tensor(task, [[1.0, 0.0]]))
    assert torch.isclose(hard, soft)
    from pretune.data import Task

    regression = Task("sts", None, "pearson")
    assert loss_fn(regression, torch.tensor([[1.0]]), target_tensor(regression, [3.0])).item() == 4.0


@pytest.mark.parametrize(("bad", "message"), [
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"eval_batch_size": 0}, "--eval-batch-size must be at least 1, got 0"),
    ({"grad_accum": 0}, "--grad-accum must be at least 1, got 0"),
    ({"steps": 0}, "--steps must be at least 1, got 0"),
    ({"epochs": 0}, "--epochs must be positive, got 0"),
    ({"lr": -1.0}, "--lr must be positive, got -1.0"),
    ({"body_lr": 0.0}, "--body-lr must be positive, got 0.0"),
    ({"weight_decay": -0.1}, "--weight-decay must be 0 or more, got -0.1"),
    ({"checkpoint_every": -1}, "--checkpoint-every must be 0 (at the end only) or more, got -1"),
    ({"lr_scheduler": "step"}, "--lr-scheduler 'step': choose one of linear, cosine, constant"),
])
def test_bad_training_options_are_refused_naming_the_option_and_its_value(bad, message):
    with pytest.raises(UserError) as refused:
        TrainConfig(**bad).validate()
    assert str(refused.value) == message


@pytest.mark.parametrize("edge", [
    {"batch_size": 1, "eval_batch_size": 1, "grad_accum": 1}, {"steps": 1}, {"weight_decay": 0.0},
    {"checkpoint_every": 0}, {"lr": 1e-9, "body_lr": 1e-9}, {"epochs": 0.5},
])
def test_the_smallest_allowed_training_options_are_accepted(edge):
    TrainConfig(**edge).validate()  # raises UserError if refused


def test_training_on_no_examples_is_refused(tiny_encoder, task):
    method = HeadMethod(tiny_encoder, task, HeadConfig(), BodyTraining.parse("frozen"))
    with pytest.raises(UserError) as refused:
        Trainer(TrainConfig(steps=1), progress=False, log=None).fit(method, [], [])
    assert str(refused.value) == "no training examples"


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an Apple GPU")
def test_device_mps_without_an_apple_gpu_is_refused_by_name():
    with pytest.raises(UserError) as refused:
        resolve_device("mps")
    assert str(refused.value) == "--device mps: no Apple GPU (MPS) is available on this machine"


def test_divergence_is_a_clear_error(tiny_mlm, task):
    with pytest.raises(UserError, match="training diverged"):
        fit(tiny_mlm, task, steps=3, lr=1e37)  # finite (an infinite rate is refused up front), still diverges

