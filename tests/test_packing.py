"""Training batches cut by length: the cut is the cheapest one, and the gradient does not change."""

import itertools

import pytest
import torch

from pretune.methods import build_method
from pretune.training import packing
from pretune.training.engine import Processes
from pretune.training.packing import CALL_COST_TOKENS, cut_by_length, length_groups
from pretune.training.trainer import TrainConfig, Trainer, set_seed
from pretune.tuning import BodyTraining


def padded_cost(lengths, groups, call_cost):
    return sum(len(g) * max(lengths[i] for i in g) + call_cost for g in groups)


def every_grouping(order):
    """All ways to cut a sorted order into consecutive groups."""
    n = len(order)
    for cuts in itertools.product([False, True], repeat=n - 1):
        groups, start = [], 0
        for position, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(order[start:position])
                start = position
        groups.append(order[start:])
        yield groups


@pytest.mark.parametrize("lengths", [[12, 58, 15, 18, 22, 25, 30, 41], [5, 90, 6, 88], [30, 31, 29, 30]])
def test_length_groups_is_the_cheapest_cut_of_the_sorted_batch(lengths):
    groups = length_groups(lengths, call_cost=CALL_COST_TOKENS)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every item, once
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cheapest = min(padded_cost(lengths, g, CALL_COST_TOKENS) for g in every_grouping(order))
    assert padded_cost(lengths, groups, CALL_COST_TOKENS) == cheapest


def test_equal_lengths_and_a_high_call_cost_keep_the_batch_whole():
    assert length_groups([20] * 8) == [list(range(8))]
    assert length_groups([5, 90, 6, 88], call_cost=10_000) == [[0, 2, 3, 1]]
    assert length_groups([5, 90, 6, 88], call_cost=0) == [[0], [2], [3], [1]]



def test_a_cut_that_saves_no_more_than_its_call_cost_is_not_made():
    # [10, 42] whole: 2 * 42 + 32 = 116 tokens; cut: (10 + 32) + (42 + 32) = 116. A tie keeps the batch whole,
    # one token more padding to save makes the cut pay.
    assert length_groups([42, 10], call_cost=32) == [[1, 0]]
    assert length_groups([43, 10], call_cost=32) == [[1], [0]]
    # three groups where the lengths cluster, each in order of length: whole costs 6 * 90 + 32 = 572 tokens
    assert length_groups([90, 10, 50, 12, 88, 52], call_cost=32) == [[1, 3], [2, 5], [4, 0]]
    assert length_groups([]) == []

class Scripted:
    """A method stand-in: items are their lengths; says whether it may be cut."""

    def __init__(self, exact):
        self.exact = exact

    def splits_exactly(self):
        return self.exact

    def item_length(self, item):
        return item


def test_cut_by_length_keeps_indices_and_refuses_when_the_forward_pass_is_random():
    items = [10, 80, 12, 78]
    assert cut_by_length(Scripted(True), [0, 1, 2, 3], items) == [[0, 2], [3, 1]]
    assert cut_by_length(Scripted(False), [0, 1, 2, 3], items) == [[0, 1, 2, 3]]
    assert cut_by_length(Scripted(True), [1, 3], items) == [[3, 1]]  # indices of the items, not positions


def prompt_tuning(backbone, task):
    return build_method("prompt-tuning", backbone, task, {"prompt_length": 3}, BodyTraining.parse("frozen"))


def test_a_frozen_body_splits_exactly_and_a_training_body_or_active_dropout_does_not(tiny_causal, task):
    method = prompt_tuning(tiny_causal, task)
    method.train()
    assert method.splits_exactly()  # frozen body: eval mode inside a training method
    unfrozen = build_method("prompt-tuning", tiny_causal, task, {"prompt_length": 3}, BodyTraining.parse("full"))
    assert not unfrozen.train().splits_exactly()
    method.add_module("idle_dropout", torch.nn.Dropout(0.0))
    assert method.train().splits_exactly()  # a dropout of p=0 draws nothing
    method.add_module("extra_dropout", torch.nn.Dropout(0.1))
    assert not method.splits_exactly()


def trained_prompt(backbone, task, call_cost, monkeypatch, processes=None):
    """The soft prompt after 3 steps of batch 8, with batches cut at `call_cost`, and the lengths of
    the items of each forward pass (on `processes`: this process's place in a group, if given)."""
    monkeypatch.setattr(packing, "CALL_COST_TOKENS", call_cost)
    set_seed(0)
    method = prompt_tuning(backbone, task)
    items = method.featurize(task.train)
    assert len({method.item_length(item) for item in items}) > 2  # lengths differ: the cut matters
    passes = []  # the item lengths of each forward pass (training collates once per pass, and no dev here)
    collate = method.collate

    def recording_collate(part):
        passes.append(sorted(method.item_length(item) for item in part))
        return collate(part)

    monkeypatch.setattr(method, "collate", recording_collate)
    config = TrainConfig(steps=3, batch_size=8, warmup_ratio=0.0, lr=0.05, seed=0)
    trainer = Trainer(config, progress=False, log=None)
    trainer.processes = processes or trainer.processes
    trainer.fit(method, items, task.targets(task.train))
    return method.soft_prompt().detach().clone(), passes


def test_training_on_batches_cut_by_length_gives_the_weights_of_whole_batches(tiny_causal, task, monkeypatch):
    whole, whole_passes = trained_prompt(tiny_causal, task, 10**9, monkeypatch)  # never cut
    singles, single_passes = trained_prompt(tiny_causal, task, 0, monkeypatch)  # one pass per length
    assert [len(lengths) for lengths in whole_passes] == [8, 8, 8]  # 3 steps, each batch whole
    assert all(len(set(lengths)) == 1 for lengths in single_passes)  # no padding left at no call cost
    assert len(single_passes) > len(whole_passes)
    set_seed(0)
    assert not torch.equal(whole, prompt_tuning(tiny_causal, task).soft_prompt())  # training moved the prompt
    torch.testing.assert_close(singles, whole, rtol=1e-5, atol=1e-6)


def test_a_process_of_a_group_runs_its_shard_of_each_batch_whole(tiny_causal, task, monkeypatch):
    """Under DDP every backward pass is a gradient exchange: in a group of 2, rank 0 runs its 4 of each
    batch of 8 as one forward pass, though at no call cost one process would cut them by length."""
    _, passes = trained_prompt(tiny_causal, task, 0, monkeypatch, processes=Processes(rank=0, world_size=2))
    assert [len(lengths) for lengths in passes] == [4, 4, 4]
    assert any(len(set(lengths)) > 1 for lengths in passes)  # lengths that one process would have cut
