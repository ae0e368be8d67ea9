"""A pattern ensemble (PET) checked by value: its members' weights by dev accuracy, its distillation
targets and stages, how its stages' results are summarised, and what it saves and loads back."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import _tiny
from pretune.api import RunConfig, build_method
from pretune.training import recipes
from pretune.training.trainer import TrainConfig, Trainer, TrainResult

# The words of bert-tiny's vocabulary the single-pattern configurations use.
PATTERN = "{text} It was {mask}."
VERBALIZER = "negative=bad positive=great,good,fine"


def cloze_config(**options) -> RunConfig:
    method_options = {"patterns": [PATTERN], "verbalizer": VERBALIZER, **options}
    return RunConfig(task="sst-2", model="bert-tiny", method="pet", method_options=method_options, train="full",
                     dtype="float32")


# ---------------------------------------------------------------- ensembles and distillation

# On the real bert-tiny, zero-shot on the dev sentences: 6/8 right with the first pattern, 4/8 with the second.
ENSEMBLE_PATTERNS = ["{text} It was {mask}.", "{mask} : {text}"]
ENSEMBLE_WORDS = "negative=terrible positive=good"


@pytest.fixture(scope="module")
def bert_tiny_once():
    """The real bert-tiny, loaded once for this module; tests train deep copies of it."""
    from pretune.backbones import load_backbone

    return load_backbone("bert-tiny")


def test_dev_weighting_weights_members_by_their_accuracy_before_training(task, bert_tiny_once):
    """The members' weights are their zero-shot dev accuracies, normalised; computed here from
    each pattern alone, before training, and different from uniform."""
    accuracies = [_zero_shot_dev_accuracy(pattern, task, bert_tiny_once) for pattern in ENSEMBLE_PATTERNS]
    assert accuracies[0] != accuracies[1], accuracies  # otherwise dev weighting would look uniform
    expected = torch.tensor(accuracies) / sum(accuracies)
    for weighting, wanted in (("dev", expected), ("uniform", torch.tensor([0.5, 0.5]))):
        method = _trained_ensemble(task, copy.deepcopy(bert_tiny_once), ensemble_weighting=weighting)
        assert torch.allclose(method.trainable_state_dict()["ensemble.weights"], wanted, atol=1e-6)


def _zero_shot_dev_accuracy(pattern: str, task, backbone) -> float:
    options = {"patterns": [pattern], "verbalizer": ENSEMBLE_WORDS}
    config = RunConfig(task="sst-2", model="bert-tiny", method="pet", method_options=options)
    method = build_method(config, task, backbone=backbone)
    predictions = method.label_scores(task.dev).argmax(-1)
    return float((predictions == torch.tensor(task.targets(task.dev))).float().mean())


def _trained_ensemble(task, backbone, patterns=ENSEMBLE_PATTERNS, **options):
    config = RunConfig(
        task="sst-2", model="bert-tiny", method="pet", train="bitfit",
        method_options={"patterns": list(patterns), "verbalizer": ENSEMBLE_WORDS, **options},
        training=TrainConfig(steps=2, batch_size=4, body_lr=1e-3),
    )
    method = build_method(config, task, backbone=backbone)
    items = method.featurize(task.train, progress=False)
    targets = task.targets(task.train)
    trainer = Trainer(config.training, progress=False, log=None)
    recipes.fit(method, trainer, items, targets, items, targets)
    return method


def distillation_targets(task, unlabelled, temperature, monkeypatch) -> torch.Tensor:
    """The soft labels the distillation phase trains on (the last fit's targets)."""
    calls = []
    original = Trainer.fit

    def recording(self, method, train_items, train_targets, *args, **kwargs):
        calls.append(train_targets)
        return original(self, method, train_items, train_targets, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording)
    same = ["{text} It was {mask}."] * 2  # two identical members: their mixture is one member's distribution
    _trained_ensemble(task, _tiny("mlm", "bert-tiny"), patterns=same, distil=True, unlabelled=str(unlabelled), distil_temperature=temperature)
    assert len(calls) == 3  # two members, then the distillation
    return torch.tensor(calls[-1])


def test_distillation_targets_are_the_ensemble_distribution_at_the_temperature(tmp_path, task, monkeypatch):
    """softmax(s / T): the log-odds of the soft labels at T are those at T=1 divided by T."""
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": e.text}) + "\n" for e in task.train))
    plain = distillation_targets(task, unlabelled, 1.0, monkeypatch)
    soft = distillation_targets(task, unlabelled, 4.0, monkeypatch)
    assert plain.shape == (len(task.train), 2)
    assert torch.allclose(plain.sum(-1), torch.ones(len(task.train)), atol=1e-5)
    log_odds = lambda p: (p[:, 1] / p[:, 0]).log()  # noqa: E731
    assert log_odds(plain).abs().max() > 1e-3
    assert torch.allclose(log_odds(soft), log_odds(plain) / 4.0, atol=1e-4)


# ---------------------------------------------------------------- a distilled model, reloaded


def test_a_distilled_state_loads_into_the_first_member_and_scores_alone(task):
    method = build_method(cloze_config(patterns=ENSEMBLE_PATTERNS), task, backbone=_tiny("mlm", "bert-tiny"))
    first = method.members[0]
    changed = {name: tensor + 0.01 for name, tensor in first.trainable_state_dict().items()}
    method.load_trainable_state_dict({"distilled." + name: tensor for name, tensor in changed.items()})
    assert method.distilled
    state = first.trainable_state_dict()
    assert state.keys() == changed.keys() and all(torch.equal(state[k], changed[k]) for k in state)
    assert torch.allclose(method.label_scores(task.test), first.label_scores(task.test))
    saved = method.trainable_state_dict()
    assert set(saved) == {"distilled." + name for name in changed}


def fit_calls(monkeypatch) -> list[dict]:
    """Every Trainer.fit call, with what it was given."""
    calls = []
    original = Trainer.fit

    def recording(self, method, train_items, train_targets, dev_items=None, dev_targets=None, stage=0, extra_loss=None):
        call = {"method": method, "items": train_items, "targets": train_targets, "dev": dev_items,
                "dev_targets": dev_targets, "stage": stage, "extra_loss": extra_loss}
        calls.append(call)
        call["result"] = original(self, method, train_items, train_targets, dev_items, dev_targets, stage, extra_loss)
        return call["result"]

    monkeypatch.setattr(Trainer, "fit", recording)
    return calls


@pytest.mark.parametrize("with_dev", [True, False])
def test_distillation_trains_the_first_member_on_its_own_rendering_with_dev_and_auxiliary_loss(tmp_path, task, monkeypatch, with_dev):
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": e.text}) + "\n" for e in task.test[:5]))
    options = {"patterns": ENSEMBLE_PATTERNS, "verbalizer": ENSEMBLE_WORDS, "distil": True, "unlabelled": str(unlabelled),
               "aux_lm_weight": 0.5}
    config = RunConfig(task="sst-2", model="bert-tiny", method="pet", train="bitfit", method_options=options,
                       training=TrainConfig(steps=2, batch_size=4, body_lr=1e-3, eval_every=1))
    method = build_method(config, task, backbone=_tiny("mlm", "bert-tiny"))
    items, targets = method.featurize(task.train, progress=False), task.targets(task.train)
    calls = fit_calls(monkeypatch)
    dev = (items, targets) if with_dev else (None, None)
    result = recipes.fit(method, Trainer(config.training, progress=False, log=None), items, targets, *dev)
    members, distil = calls[:2], calls[2]
    assert [c["stage"] for c in calls] == [0, 1, 2] and [c["method"] for c in members] == method.members
    for index, call in enumerate(members):  # each member on its own rendering, its dev, its auxiliary loss
        assert call["items"] is items[index] and ((call["dev"] is items[index]) if with_dev else call["dev"] is None)
        assert call["extra_loss"] is not None and call["extra_loss"].method is method.members[index]
    assert distil["method"] is method.members[0]
    unlabelled_items = method.members[0].featurize(read_unlabelled(unlabelled), progress=False)
    assert [r.prefix for r in distil["items"]] == [r.prefix for r in unlabelled_items]
    assert (distil["dev"] is items[0]) if with_dev else distil["dev"] is None
    assert [r.prefix for r in distil["extra_loss"].items] == [r.prefix for r in unlabelled_items]
    assert method.distilled and len(result.history) == 3 * (2 + with_dev)  # with dev, each stage's start (step 0) too
    assert result.best_dev == distil["result"].best_dev  # the distilled model's, not the members' mean
    assert all(("dev_accuracy" in row) == with_dev for row in result.history)


def test_without_unlabelled_texts_each_members_auxiliary_loss_reads_its_own_training_items(task, monkeypatch):
    options = {"patterns": ENSEMBLE_PATTERNS, "verbalizer": ENSEMBLE_WORDS, "aux_lm_weight": 0.5}
    config = RunConfig(task="sst-2", model="bert-tiny", method="pet", train="bitfit", method_options=options,
                       training=TrainConfig(steps=1, batch_size=4, body_lr=1e-3))
    method = build_method(config, task, backbone=_tiny("mlm", "bert-tiny"))
    items, targets = method.featurize(task.train, progress=False), task.targets(task.train)
    calls = fit_calls(monkeypatch)
    recipes.fit(method, Trainer(config.training, progress=False, log=None), items, targets)
    assert len(calls) == 2
    for index, call in enumerate(calls):
        assert call["extra_loss"].items is items[index] and call["extra_loss"].weight == 0.5


def read_unlabelled(path):
    from pretune.data import read_examples

    return read_examples(path, require_label=False)



def test_an_ensemble_counts_the_shared_body_once(task):
    method = build_method(cloze_config(patterns=ENSEMBLE_PATTERNS), task, backbone=_tiny("mlm", "bert-tiny"))
    one = build_method(cloze_config(), task, backbone=_tiny("mlm", "bert-tiny"))
    assert sum(p.numel() for p in method.parameters()) == sum(p.numel() for p in one.parameters())
    assert len(list(method.parameters())) == len(list(one.parameters()))


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
    """An ensemble member whose items are its label scores: what it predicts is written in the test
    (an example's own text, if featurized, is not read: every example scores as `RIGHT_1`)."""

    def __init__(self, config):
        self.config, self.task, self.name = config, None, "scripted"
        self.prompt = SimpleNamespace(pattern="scripted")
        self.weight = torch.zeros(1)

    def featurize(self, examples, progress=True):
        return [RIGHT_1 for _ in examples]

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


def test_an_untrained_ensemble_saves_its_bodys_own_names_and_loads_back_as_an_ensemble(task):
    """Before training (no member states, not distilled) the saved names are the body's own, and a
    state with those names loads as the ensemble's shared body, not as a distilled model."""
    method = build_method(cloze_config(patterns=ENSEMBLE_PATTERNS), task, backbone=_tiny("mlm", "bert-tiny"))
    state = method.trainable_state_dict()
    assert state.keys() == method.members[0].trainable_state_dict().keys()
    again = build_method(cloze_config(patterns=ENSEMBLE_PATTERNS), task, backbone=_tiny("mlm", "bert-tiny"))
    again.load_trainable_state_dict(state)
    assert not again.distilled and len(again.active) == 2


def test_a_distilled_ensembles_summary_is_the_distilled_models_not_the_members_mean():
    """Stage results scripted: members 0.5 and 0.7 on dev, the distilled model 0.9."""
    config = SimpleNamespace(ensemble_weighting="uniform", distil=True, distil_temperature=2.0,
                             unlabelled_examples=lambda: ["unlabelled one", "unlabelled two"])
    ensemble = recipes.PatternEnsemble([ScriptedMember(config) for _ in range(2)])
    results = [MEMBER_A, MEMBER_B, DISTILLED]
    stages = []

    def fit(method, items, targets, dev_items, dev_targets, stage, extra_loss):
        stages.append((stage, targets))
        return results[stage]

    trainer = SimpleNamespace(config=SimpleNamespace(eval_batch_size=8), fit=fit)
    summary = recipes.fit(ensemble, trainer, TRAIN_ITEMS, TRAIN_TARGETS, DEV_ITEMS, DEV_TARGETS)
    assert summary.best_dev == pytest.approx(0.9) and summary.best_step == 2 and summary.steps == 24
    assert [stage for stage, _ in stages] == [0, 1, 2] and ensemble.distilled
    # the soft labels: both members score every unlabelled text [0, 1]; at T = 2 that is softmax([0, 0.5])
    positive = 1 / (1 + math.exp(-0.5))
    assert torch.allclose(torch.tensor(stages[2][1]), torch.tensor([[1 - positive, positive]] * 2))
