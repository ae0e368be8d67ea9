"""Training keeps what works: the untrained state (step 0) is evaluated on dev where the method's
start is a usable model, and restored when no trained state beats it. Checked by value with the
scripted method of test_training_values (its dev accuracy follows a script, one value per evaluation)."""

import torch

from pretune.methods import build_methods, make_config
from pretune.training.trainer import TrainConfig, Trainer
from pretune.tuning import BodyTraining
from test_training_values import Scripted, scripted_task


class UsableStart(Scripted):
    start_is_usable = True  # as zero-shot PET's is


def run(script, steps, eval_start=None, method_class=Scripted):
    task = scripted_task()
    method = method_class(task, script)
    config = TrainConfig(steps=steps, batch_size=4, lr=0.1, eval_every=1, warmup_ratio=0.0, eval_start=eval_start)
    result = Trainer(config, progress=False, log=None).fit(
        method, method.featurize(task.train), task.targets(task.train), method.featurize(task.dev), task.targets(task.dev)
    )
    return method, result


def test_a_best_step_0_restores_the_untrained_weights():
    method, result = run([0.75, 0.5, 0.25], steps=2, eval_start=True)
    assert [row["step"] for row in result.history] == [0, 1, 2]
    assert [row["dev_accuracy"] for row in result.history] == [0.75, 0.5, 0.25]
    assert result.best_step == 0 and result.best_dev == 0.75
    assert torch.equal(method.seen[0], torch.zeros(2))  # step 0 saw the untrained vector ...
    assert not torch.equal(method.seen[2], torch.zeros(2))  # ... which training moved
    assert torch.equal(method.weight.detach(), torch.zeros(2))  # and it is what the run keeps


def test_a_trained_state_that_beats_step_0_is_kept():
    method, result = run([0.5, 0.75, 0.25], steps=2, eval_start=True)
    assert result.best_step == 1 and torch.equal(method.weight.detach(), method.seen[1])


def test_a_tie_with_step_0_keeps_the_untrained_state():
    method, result = run([0.5, 0.5, 0.5], steps=2, eval_start=True)
    assert result.best_step == 0 and torch.equal(method.weight.detach(), torch.zeros(2))


def test_step_0_has_no_training_loss_and_later_rows_do():
    _, result = run([0.5, 0.5], steps=1, eval_start=True)
    assert "loss" not in result.history[0] and "loss" in result.history[1]


def test_by_default_the_method_decides():
    plain, result = run([0.75, 0.5, 0.25], steps=2)
    assert len(plain.seen) == 2 and result.history[0]["step"] == 1 and result.best_step == 1
    usable, result = run([0.75, 0.5, 0.25], steps=2, method_class=UsableStart)
    assert len(usable.seen) == 3 and result.best_step == 0


def test_eval_start_no_overrides_a_usable_start():
    method, result = run([0.75, 0.5, 0.25], steps=2, eval_start=False, method_class=UsableStart)
    assert len(method.seen) == 2 and result.best_step == 1  # the script's first value went to step 1


def test_pet_start_is_usable_and_soft_prompts_and_heads_are_not(tiny_causal, task):
    def start(method, train, **options):
        config = make_config(method, options, task=task)
        return build_methods(method, tiny_causal, task, config, BodyTraining.parse(train))[0].start_is_usable

    assert start("pet", "full") and start("pet", "lora")
    assert not start("ptuning", "frozen", encoder="none", prompt_length=2)
    assert not start("deep-prompt", "frozen", prompt_length=2)
    assert not start("head", "frozen")
