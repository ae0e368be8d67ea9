"""iPET (`--generations`, training.ipet) checked by value: how many pseudo-labelled texts a generation
adds per label, which ones (the most confident of the other members' mixture), that a member never
labels for itself, that a seeded run repeats, the refusals, and one run end to end through the CLI."""

from __future__ import annotations

import copy
import json
import random
from types import SimpleNamespace

import pytest
import torch

from conftest import _tiny
from pretune.api import RunConfig, build_method
from pretune.training import ipet, recipes
from pretune.training.trainer import TrainConfig, Trainer, TrainResult
from refusals import assert_refused, run_main

PATTERNS = ["{text} It was {mask}.", "{mask} : {text}"]
WORDS = "negative=terrible positive=good"


# ---------------------------------------------------------------- the rule, piece by piece


@pytest.mark.parametrize(("generation", "expected"), [(1, [0, 0]), (2, [12, 4]), (3, [72, 24])])
def test_each_generation_adds_the_labelled_sets_label_counts_times_growth_power_minus_one(generation, expected):
    # 3 negative, 1 positive labelled; growth 5: generation g trains on 4 * 5^(g-1) examples, 3:1
    assert ipet.added_per_label([0, 0, 1, 0], 2, 5, generation) == expected


def test_the_most_confident_texts_of_each_label_are_kept_ties_by_pool_order():
    p_positive = [0.9, 0.2, 0.6, 0.95, 0.4, 0.1, 0.6]
    distribution = torch.tensor([[1 - p, p] for p in p_positive])
    indices, labels = ipet.most_confident(distribution, [2, 3])
    # negative: texts 5 (0.9), 1 (0.8), 4 (0.6); positive: 3 (0.95), 0 (0.9), then 2 and 6 tie at 0.6
    assert indices == [5, 1, 3, 0, 2]
    assert labels == [0, 0, 1, 1, 1]


def test_ties_keep_pool_order_in_a_pool_large_enough_for_an_unstable_sort_to_reorder_them():
    distribution = torch.tensor([[0.3, 0.7]] * 64)  # torch's unstable sort reorders 64 equal values
    assert ipet.most_confident(distribution, [0, 10]) == (list(range(10)), [1] * 10)


def test_a_label_with_fewer_texts_than_asked_gives_what_it_has():
    distribution = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert ipet.most_confident(distribution, [5, 5]) == ([0, 2, 1], [0, 0, 1])
    assert ipet.most_confident(distribution, [0, 0]) == ([], [])


@pytest.mark.parametrize(("members", "size"), [(2, 1), (3, 1), (5, 1), (6, 2), (9, 2), (10, 3)])
def test_labellers_are_a_quarter_of_the_other_members_never_the_member_itself(members, size):
    for seed in range(20):
        for member in range(members):
            chosen = ipet.labellers(random.Random(seed), member, members)
            assert len(chosen) == size and member not in chosen and chosen == sorted(set(chosen))


def test_the_labellers_follow_the_seed():
    draws = {seed: ipet.labellers(random.Random(seed), 0, 6) for seed in range(10)}
    assert draws == {seed: ipet.labellers(random.Random(seed), 0, 6) for seed in range(10)}
    assert len({tuple(chosen) for chosen in draws.values()}) > 1  # the seed does pick among the others


def test_the_mixture_weighs_the_chosen_members_alone_normalised():
    distributions = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])]
    weights = torch.tensor([0.2, 0.6, 0.2])
    assert torch.allclose(ipet.mixture(distributions, weights, [0, 1]), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(ipet.mixture(distributions, torch.tensor([0.0, 0.0, 1.0]), [0, 1]), torch.tensor([[0.5, 0.5]]))


# ---------------------------------------------------------------- generations on scripted members

POOL = [f"pool {i}" for i in range(7)]
# p(positive) each member gives each pool text (any other text: 0.5); the members disagree.
P_POSITIVE = {
    "A": [0.9, 0.2, 0.6, 0.95, 0.4, 0.1, 0.6],
    "B": [0.3, 0.7, 0.8, 0.1, 0.55, 0.99, 0.45],
    "C": [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
}


class ScriptedMember:
    """A member whose label probabilities on the pool are written above; its items name it and the text."""

    def __init__(self, name, config, task):
        self.name, self.config, self.task = name, config, task
        self.prompt = SimpleNamespace(pattern=f"pattern {name}")

    def featurize(self, examples, progress=True):
        return [(self.name, example.text) for example in examples]

    def score_items(self, items, batch_size=32, progress=False, desc="scoring"):
        rows = []
        for _, text in items:
            p = P_POSITIVE[self.name][POOL.index(text)] if text in POOL else 0.5
            rows.append([1 - p, p])
        return torch.tensor(rows).log()

    def trainable_state_dict(self):
        return {"weight": torch.zeros(1)}

    def load_trainable_state_dict(self, state):
        pass


def scripted_ipet(names=("A", "B"), generations=2, growth=3, distil=False):
    pool = [SimpleNamespace(text=text) for text in POOL]
    config = SimpleNamespace(ensemble_weighting="uniform", distil=distil, distil_temperature=1.0, generations=generations,
                             generation_growth=growth, unlabelled_examples=lambda: pool)
    task = SimpleNamespace(labels=["negative", "positive"], metric="accuracy")
    return ipet.IteratedEnsemble([ScriptedMember(name, config, task) for name in names])


def fit_recorded(ensemble, seed=42, targets=(0, 1), with_dev=False):
    """The recipe's fit with a trainer that trains nothing and records what each stage was given."""
    calls = []

    def fit(method, items, targets, dev_items, dev_targets, stage, extra_loss):
        calls.append({"member": method.name, "items": list(items), "targets": list(targets), "stage": stage,
                      "dev": dev_items})
        return TrainResult(steps=1, best_step=1, best_dev=0.5 + stage / 10)

    trainer = SimpleNamespace(config=SimpleNamespace(eval_batch_size=4, seed=seed), fit=fit)
    names = [m.name for m in ensemble.members]
    texts = ["labelled neg", "labelled pos"] if targets == (0, 1) else [f"labelled {i}" for i in range(len(targets))]
    labelled = [[(name, text) for text in texts] for name in names]
    dev = ([[(name, "dev")] for name in names], [1]) if with_dev else (None, None)
    result = recipes.fit(ensemble, trainer, labelled, list(targets), *dev)
    return calls, result


def test_each_label_counts_its_own_pseudo_labels_and_every_generation_trains_with_dev():
    # labelled 1 negative, 2 positive; growth 3: 2 negative and 4 positive pool texts per member (both have them)
    calls, result = fit_recorded(scripted_ipet(), targets=(0, 1, 1), with_dev=True)
    assert [m["pseudo_labelled"] for m in result.generations[1]["members"]] == [{"negative": 2, "positive": 4}] * 2
    assert [len(c["items"]) for c in calls] == [3, 3, 9, 9]
    assert all(c["dev"] == [(c["member"], "dev")] for c in calls)  # the dev set chooses each member's state


def test_the_second_generation_trains_on_the_labelled_set_plus_the_other_members_most_confident_texts():
    calls, result = fit_recorded(scripted_ipet())
    assert [(c["member"], c["stage"]) for c in calls] == [("A", 0), ("B", 1), ("A", 2), ("B", 3)]
    for call in calls[:2]:  # generation 1: PET, the labelled set alone
        assert call["items"] == [(call["member"], "labelled neg"), (call["member"], "labelled pos")]
        assert call["targets"] == [0, 1]
    # growth 3, one labelled text per label: 1 * (3 - 1) = 2 pseudo-labelled texts per label.
    # A is labelled by B: negative 3 (0.9), 0 (0.7); positive 5 (0.99), 2 (0.8).
    # B is labelled by A: negative 5 (0.9), 1 (0.8); positive 3 (0.95), 0 (0.9).
    for call, picks in ((calls[2], [(3, 0), (0, 0), (5, 1), (2, 1)]), (calls[3], [(5, 0), (1, 0), (3, 1), (0, 1)])):
        name = call["member"]
        assert call["items"] == [(name, "labelled neg"), (name, "labelled pos")] + [(name, POOL[i]) for i, _ in picks]
        assert call["targets"] == [0, 1] + [label for _, label in picks]
    assert result.steps == 4
    assert result.generations == [
        {"generation": 1, "members": [
            {"pattern": "pattern A", "labelled_by": [], "pseudo_labelled": {"negative": 0, "positive": 0}, "dev_accuracy": 0.5},
            {"pattern": "pattern B", "labelled_by": [], "pseudo_labelled": {"negative": 0, "positive": 0}, "dev_accuracy": 0.6}]},
        {"generation": 2, "members": [
            {"pattern": "pattern A", "labelled_by": [1], "pseudo_labelled": {"negative": 2, "positive": 2}, "dev_accuracy": 0.7},
            {"pattern": "pattern B", "labelled_by": [0], "pseudo_labelled": {"negative": 2, "positive": 2}, "dev_accuracy": 0.8}]},
    ]


def test_a_member_is_never_labelled_by_itself_and_the_labels_are_its_labellers():
    """Three members, one labeller each (a quarter of two, at least one), drawn with the seed."""
    for seed in range(8):
        calls, result = fit_recorded(scripted_ipet(names=("A", "B", "C"), growth=2), seed=seed)
        for index, (call, record) in enumerate(zip(calls[3:], result.generations[1]["members"])):
            (labeller,) = record["labelled_by"]
            assert labeller != index
            p = torch.tensor(P_POSITIVE["ABC"[labeller]])
            indices, labels = ipet.most_confident(torch.stack([1 - p, p], dim=-1), [1, 1])
            assert call["targets"] == [0, 1] + labels
            assert call["items"][2:] == [(call["member"], POOL[i]) for i in indices]


def test_the_labellers_repeat_with_the_seed_and_change_with_it():
    def labellers(seed):
        _, result = fit_recorded(scripted_ipet(names=("A", "B", "C"), generations=3, growth=2), seed=seed)
        return [[m["labelled_by"] for m in g["members"]] for g in result.generations]

    assert labellers(7) == labellers(7)
    assert len({json.dumps(labellers(seed)) for seed in range(8)}) > 1


def test_distillation_follows_the_last_generation_as_the_last_stage():
    calls, result = fit_recorded(scripted_ipet(distil=True))
    assert [c["stage"] for c in calls] == [0, 1, 2, 3, 4] and calls[-1]["member"] == "A"
    assert len(calls[-1]["targets"]) == len(POOL)  # the whole pool, soft labels of the last generation
    assert len(result.generations) == 2


# ---------------------------------------------------------------- the run as the options build it


def ipet_config(unlabelled, **options) -> RunConfig:
    method_options = {"patterns": PATTERNS, "verbalizer": WORDS, "unlabelled": str(unlabelled), **options}
    return RunConfig(task="sst-2", model="bert-tiny", method="pet", train="bitfit", method_options=method_options,
                     training=TrainConfig(steps=1, batch_size=4, body_lr=1e-3, seed=3))


@pytest.fixture
def unlabelled(tmp_path, task):
    path = tmp_path / "unlabelled.jsonl"
    texts = [e.text for e in task.train] + ["a fine film", "a dreadful film", "superb", "dire"]
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def test_one_generation_is_petss_plain_ensemble_and_more_are_ipet(task, unlabelled):
    backbone = _tiny("mlm", "bert-tiny")
    assert type(build_method(ipet_config(unlabelled), task, backbone=backbone)) is recipes.PatternEnsemble
    assert type(build_method(ipet_config(unlabelled, generations=2), task, backbone=backbone)) is ipet.IteratedEnsemble


def trained_ipet(task, unlabelled, backbone):
    config = ipet_config(unlabelled, generations=2, generation_growth=2)
    method = build_method(config, task, backbone=backbone)
    items, targets = method.featurize(task.train, progress=False), task.targets(task.train)
    result = recipes.fit(method, Trainer(config.training, progress=False, log=None), items, targets, items, targets)
    return method, result


def test_a_seeded_ipet_run_repeats_exactly(task, unlabelled):
    backbone = _tiny("mlm", "bert-tiny")
    first, first_result = trained_ipet(task, unlabelled, copy.deepcopy(backbone))
    second, second_result = trained_ipet(task, unlabelled, copy.deepcopy(backbone))
    assert first_result.generations == second_result.generations
    # growth 2: up to 4 texts per label (the random model may give one label to fewer), so the runs had some to repeat
    added = [m["pseudo_labelled"] for m in first_result.generations[1]["members"]]
    assert all(0 < sum(counts.values()) and max(counts.values()) <= 4 for counts in added)
    a, b = first.trainable_state_dict(), second.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(first.label_scores(task.test), second.label_scores(task.test))


def test_an_ipet_run_killed_in_its_second_generation_resumes_to_the_uninterrupted_result(tmp_path, unlabelled, monkeypatch):
    """Each member of each generation is a stage: generation 2's pseudo-labels come again from generation
    1's finished stages, and the stage that was cut continues at its step."""
    from pretune.api import resume_run, train_run
    from run_folders import assert_same_run
    from test_checkpoint import Crash, crash_after, tiny_bert, tiny_config

    config = tiny_config(tmp_path, method="pet", train="bitfit", patterns=PATTERNS, verbalizer=WORDS,
                         unlabelled=str(unlabelled), generations=2, generation_growth=2)
    config.training.steps, config.training.eval_every, config.training.lr = 4, 2, None
    train_run(config, tmp_path / "straight", progress=False, backbone=tiny_bert())
    crash_after(monkeypatch, 3, 2)  # generation 2's second member, step 2
    with pytest.raises(Crash):
        train_run(config, tmp_path / "crashed", progress=False, backbone=tiny_bert())
    monkeypatch.undo()
    resume_run(tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(tmp_path / "crashed", tmp_path / "straight")
    generations = json.loads((tmp_path / "straight" / "metrics.json").read_text())["train"]["generations"]
    assert [g["generation"] for g in generations] == [1, 2]


REFUSALS = {
    "one pattern": (["--pattern", PATTERNS[0], "--unlabelled", "{task}/train.jsonl", "--generations", "2"],
                    "--generations 2 trains each pattern on the other patterns' pseudo-labels: give --pattern at least twice"),
    "no unlabelled texts": (["--pattern", PATTERNS[0], "--pattern", PATTERNS[1], "--generations", "3"],
                            "--generations 3 pseudo-labels unlabelled texts: give --unlabelled FILE"),
    "no generation": (["--generations", "0"], "--generations must be at least 1, got 0"),
    "growth of 1": (["--pattern", PATTERNS[0], "--pattern", PATTERNS[1], "--unlabelled", "{task}/train.jsonl",
                     "--generations", "2", "--generation-growth", "1"], "--generation-growth must be at least 2, got 1"),
    "growth without generations": (["--generation-growth", "3"],
                                   "--generation-growth 3 grows iPET's generations: give --generations 2 or more"),
    "another method": (["--method", "ptuning", "--generations", "2"],
                       "method 'ptuning' has no option generations (its options: aggregate, calibrate, encoder, head, label_tokens, "
                       "max_length, patterns, prompt_length, readout, scoring, verbalizer)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_whole_line(case, tmp_path, task_folder, capsys):
    given, message = REFUSALS[case]
    flags = [str(flag).replace("{task}", str(task_folder)) for flag in given]
    out = tmp_path / "run"
    argv = ["train", "--task", task_folder, "--model", "bert-tiny", "--method", "pet", "--steps", "1", "--quiet",
            *flags, "--out", out]
    code = run_main(argv)
    err = capsys.readouterr().err
    assert_refused(code, err, message, out)
    assert err.strip() == f"pretune: error: {message}"


# ---------------------------------------------------------------- end to end on a real model


@pytest.mark.slow
def test_two_generations_of_two_patterns_through_the_cli_save_predict_and_record(tmp_path, task_folder, capsys):
    """bert-tiny (packaged), 8 labelled sentences, 12 unlabelled: two generations, then distillation."""
    from safetensors.torch import load_file

    from pretune.cli import main

    pool = tmp_path / "pool.jsonl"
    texts = ["a fine film", "a dreadful film", "superb", "dire", "i enjoyed it", "a waste of time",
             "moving and funny", "tedious", "a joy", "a mess", "well made", "poorly made"]
    pool.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    out = tmp_path / "run"
    train = ["train", "--task", task_folder, "--model", "bert-tiny", "--method", "pet", "--train", "bitfit",
             "--pattern", PATTERNS[0], "--pattern", PATTERNS[1], "--verbalizer", WORDS, "--unlabelled", pool,
             "--generations", "2", "--generation-growth", "2", "--steps", "2", "--distil", "--out", out, "--quiet"]
    assert main([str(a) for a in train]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    generations = metrics["train"]["generations"]
    assert [g["generation"] for g in generations] == [1, 2]
    for member, labeller in zip(generations[1]["members"], ([1], [0])):
        assert member["labelled_by"] == labeller
        # growth 2: up to 4 a label (4 labelled each), fewer where bert-tiny gave a label to fewer of the 12 texts
        counts = member["pseudo_labelled"]
        assert set(counts) == {"negative", "positive"} and 0 < sum(counts.values()) and max(counts.values()) <= 4
        assert 0.0 <= member["dev_accuracy"] <= 1.0
    phases = {json.loads(line)["phase"] for line in (out / "history.jsonl").read_text().splitlines()}
    assert phases == {0, 1, 2, 3, 4}  # two generations of two members, then distillation
    assert all(key.startswith("distilled.") for key in load_file(out / "adapter.safetensors"))
    capsys.readouterr()
    assert main([str(a) for a in ["predict", "--run", out, "--input", task_folder / "test.jsonl"]]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8
