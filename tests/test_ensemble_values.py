"""A pattern ensemble checked by value: how its stages' results are summarised, how its members are
weighted by dev accuracy (dev apart from train, and when no member gets anything right), and what
it saves and loads back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pretune.training import recipes
from pretune.training.trainer import TrainResult

# ---------------------------------------------------------------- one summary of the stages


def stage(steps, best_step, best_dev, seconds, per_second, stopped=False, losses=(1.0,)) -> TrainResult:
    history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    return TrainResult(steps=steps, best_step=best_step, best_dev=best_dev, history=history,
                       train_seconds=seconds, examples_per_second=per_second, stopped_early=stopped)


# Two members (0.5 and 0.7 on dev), then a distillation stage (0.9); unequal times and speeds.
MEMBER_A = stage(10, 4, 0.5, 2.0, 30.0, losses=(0.9, 0.8))
MEMBER_B = stage(6, 6, 0.7, 3.0, 10.0, stopped=True, losses=(0.7,))
DISTILLED = stage(8, 2, 0.9, 5.0, 20.0, losses=(0.6, 0.5))


def test_members_summary_sums_steps_and_time_and_averages_the_best_dev():
    summary = recipes._combined([MEMBER_A, MEMBER_B], distilled=False)
    assert summary.steps == 16
    assert summary.best_step == 6  # the last stage's
    assert summary.best_dev == pytest.approx(0.6)  # the members' mean
    assert summary.train_seconds == pytest.approx(5.0)
    # 60 + 30 examples in 5 seconds: the speed over the whole run, not the mean of the speeds (20)
    assert summary.examples_per_second == pytest.approx(18.0)
    assert summary.stopped_early is True  # one member stopped early
    assert summary.history == [{"phase": 0, "step": 1, "loss": 0.9}, {"phase": 0, "step": 2, "loss": 0.8},
                               {"phase": 1, "step": 1, "loss": 0.7}]


def test_distilled_summary_takes_the_best_dev_of_the_distilled_model_alone():
    summary = recipes._combined([MEMBER_A, MEMBER_B, DISTILLED], distilled=True)
    assert summary.best_dev == pytest.approx(0.9)
    assert summary.best_step == 2
    assert summary.steps == 24
    assert summary.examples_per_second == pytest.approx((60 + 30 + 100) / 10.0)
    assert [row["phase"] for row in summary.history] == [0, 0, 1, 2, 2]


def test_summary_without_dev_or_time_has_no_best_dev_and_no_speed():
    no_dev = [stage(5, 5, None, 0.0, 0.0, losses=()), stage(5, 5, None, 0.0, 0.0, losses=())]
    summary = recipes._combined(no_dev, distilled=False)
    assert summary.best_dev is None
    assert summary.examples_per_second == 0.0
    assert summary.stopped_early is False
    # a member without dev does not pull the mean of those with one
    assert recipes._combined([MEMBER_A, stage(5, 5, None, 1.0, 1.0)], distilled=False).best_dev == pytest.approx(0.5)


def test_summary_of_runs_under_a_second_still_reports_their_speed():
    quick = [stage(1, 1, 0.5, 0.25, 40.0), stage(1, 1, 0.5, 0.25, 40.0)]
    assert recipes._combined(quick, distilled=False).examples_per_second == pytest.approx(40.0)


# ---------------------------------------------------------------- weights by dev accuracy, scripted members


class ScriptedMember:
    """An ensemble member whose items are its label scores: what it predicts is written in the test."""

    def __init__(self, config):
        self.config, self.task, self.name = config, None, "scripted"
        self.prompt = SimpleNamespace(pattern="scripted")
        self.weight = torch.zeros(1)

    def score_items(self, items, batch_size=32, progress=False, desc="scoring"):
        return torch.tensor(items, dtype=torch.float32)

    def trainable_state_dict(self):
        return {"weight": self.weight.clone()}

    def load_trainable_state_dict(self, state):
        self.weight = state["weight"].clone()


RIGHT_0, RIGHT_1 = [1.0, 0.0], [0.0, 1.0]  # scores predicting label 0, label 1


def predicting(*labels) -> list[list[float]]:
    return [RIGHT_1 if label else RIGHT_0 for label in labels]


def scripted_ensemble(weighting="dev", members=2) -> recipes.PatternEnsemble:
    config = SimpleNamespace(ensemble_weighting=weighting, distil=False)
    return recipes.PatternEnsemble([ScriptedMember(config) for _ in range(members)])


def fit_scripted(ensemble, train_items, train_targets, dev_items=None, dev_targets=None):
    """The recipe's fit with a trainer that trains nothing: only the weighting runs."""
    finished = TrainResult(steps=1, best_step=1, best_dev=None)
    trainer = SimpleNamespace(config=SimpleNamespace(eval_batch_size=8), fit=lambda *args, **kwargs: finished)
    recipes.fit(ensemble, trainer, train_items, train_targets, dev_items, dev_targets)
    return ensemble.trainable_state_dict()["ensemble.weights"]


# Member A is right on all of train and on 1 of 4 dev examples; member B on none of train and 3 of 4 of dev.
TRAIN_TARGETS, DEV_TARGETS = [0, 0, 0, 0], [1, 1, 1, 1]
TRAIN_ITEMS = [predicting(0, 0, 0, 0), predicting(1, 1, 1, 1)]
DEV_ITEMS = [predicting(1, 0, 0, 0), predicting(1, 1, 0, 1)]


def test_dev_weights_are_the_members_accuracies_on_dev_not_on_train():
    weights = fit_scripted(scripted_ensemble(), TRAIN_ITEMS, TRAIN_TARGETS, DEV_ITEMS, DEV_TARGETS)
    assert torch.allclose(weights, torch.tensor([0.25, 0.75]))


def test_without_dev_the_weights_are_the_accuracies_on_train():
    weights = fit_scripted(scripted_ensemble(), TRAIN_ITEMS, TRAIN_TARGETS)
    assert torch.allclose(weights, torch.tensor([1.0, 0.0]))


def test_dev_weights_are_normalised_when_the_accuracies_sum_below_one():
    dev = [predicting(1, 0, 0, 0), predicting(1, 1, 0, 0)]  # 1/4 and 2/4 right
    weights = fit_scripted(scripted_ensemble(), TRAIN_ITEMS, TRAIN_TARGETS, dev, DEV_TARGETS)
    assert torch.allclose(weights, torch.tensor([1 / 3, 2 / 3]))


@pytest.mark.parametrize("members", [2, 3])
def test_dev_weights_are_uniform_when_no_member_gets_anything_right(members):
    dev = [predicting(0, 0, 0, 0)] * members
    weights = fit_scripted(scripted_ensemble(members=members), [dev[0]] * members, TRAIN_TARGETS, dev, DEV_TARGETS)
    assert torch.allclose(weights, torch.full((members,), 1 / members))


def test_uniform_weighting_ignores_the_accuracies():
    weights = fit_scripted(scripted_ensemble("uniform"), TRAIN_ITEMS, TRAIN_TARGETS, DEV_ITEMS, DEV_TARGETS)
    assert torch.allclose(weights, torch.tensor([0.5, 0.5]))
