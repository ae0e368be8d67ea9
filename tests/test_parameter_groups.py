"""Parameter groups by role: each role's learning rate and weight decay come from the run's
configuration (or the method's defaults), the same way for every method."""

import torch

from conftest import sentiment_task
from pretune.cli import main
from pretune.cli_run import RATE_DEFAULTS
from pretune.methods import METHODS, HeadConfig, HeadMethod, build_method
from pretune.training.trainer import TrainConfig, Trainer, optimizer_groups, set_seed
from pretune.tuning import BodyTraining


def _head_after_one_step(backbone, task, weight_decay: float):
    set_seed(0)
    method = HeadMethod(backbone, task, HeadConfig(dropout=0.0), BodyTraining.parse("frozen"))
    start = {k: v.clone() for k, v in method.head.state_dict().items()}
    items = method.featurize(task.train, progress=False)
    config = TrainConfig(steps=1, lr=0.1, weight_decay=weight_decay, warmup_ratio=0.0, max_grad_norm=None)
    Trainer(config, progress=False, log=None).fit(method, items, task.targets(task.train))
    return start, method.head.state_dict()


def test_weight_decay_shrinks_the_weights_by_lr_times_decay(tiny_mlm, task):
    """AdamW decouples the decay: one step with decay wd lands lr * wd * w0 below the same step without."""
    start, plain = _head_after_one_step(tiny_mlm, task, 0.0)
    _, decayed = _head_after_one_step(tiny_mlm, task, 0.5)
    for name, w0 in start.items():
        assert not torch.equal(plain[name], w0)  # the step moved the weights
        assert torch.allclose(decayed[name] - plain[name], -0.1 * 0.5 * w0, atol=1e-6), name


def test_roles_get_the_configured_rates_and_decay(tiny_mlm, task):
    method = build_method("ptuning", tiny_mlm, task, {"readout": "head"}, BodyTraining.parse("full"))
    config = TrainConfig(lr=2e-2, body_lr=3e-5, weight_decay=0.2)
    groups = {g["name"]: g for g in optimizer_groups(method, config)}
    assert set(groups) == {"head", "prompt", "body", "no_decay"}
    assert groups["head"]["lr"] == groups["prompt"]["lr"] == 2e-2 and groups["body"]["lr"] == groups["no_decay"]["lr"] == 3e-5
    assert groups["head"]["weight_decay"] == groups["prompt"]["weight_decay"] == groups["body"]["weight_decay"] == 0.2
    assert groups["no_decay"]["weight_decay"] == 0.0 and all(p.ndim < 2 for p in groups["no_decay"]["params"])
    every = [p for g in groups.values() for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == sum(p.requires_grad for p in method.parameters())


def test_lr_is_refused_for_a_method_without_parameters_of_its_own(tmp_path, task_folder, capsys):
    code = main(["train", "--task", str(task_folder), "--model", "bert-tiny", "--method", "pet", "--lr", "1e-4",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--method pet adds none: set the body's rate with --body-lr" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def _short(rate: float) -> str:
    return f"{rate:.0e}".replace("e-0", "e-")  # 0.0003 -> 3e-4, as the help writes it


def test_help_shows_every_methods_default_rates():
    task = sentiment_task()
    text = {name: " ".join(words.split()) for name, words in RATE_DEFAULTS.items()}
    for name, spec in METHODS.items():
        rates = spec.make_config({}, task).default_rates(BodyTraining.parse(spec.default_training))
        if rates.own is None:
            assert f"{name} adds no parameters of its own" in text["lr"]
        else:
            assert f"{name} {_short(rates.own)}" in text["lr"], name
        assert _short(rates.body) in text["body_lr"], name
