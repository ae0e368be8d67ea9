"""The cloze (PET) computations checked by value: how a label's words combine (directly and through
the method, which must honour --aggregate), the auxiliary LM loss and its rows, the open-vocabulary
readout, each against numbers computed outside the method. Ensembles and distillation: test_ensemble_values.py."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import _tiny
from pretune.api import RunConfig, build_method, evaluate_untrained
from pretune.cloze.scoring import LabelWordScorer
from pretune.cloze.verbalizer import aggregate
from pretune.data import Example, Task
from pretune.training import recipes
from pretune.training.trainer import TrainConfig, Trainer

# ---------------------------------------------------------------- aggregation, directly

# Word scores of two examples; label 0 has one word, label 1 three (unequal counts on purpose).
WORDS = torch.tensor([[-1.0, -2.0, -4.0, -0.5], [-3.0, -1.0, -1.0, -7.0]])
WORD_LABELS = torch.tensor([0, 1, 1, 1])


def test_mean_divides_each_label_by_its_own_word_count():
    expected = torch.tensor([[-1.0, (-2.0 - 4.0 - 0.5) / 3], [-3.0, (-1.0 - 1.0 - 7.0) / 3]])
    assert torch.allclose(aggregate(WORDS, WORD_LABELS, 2, "mean"), expected)


def test_mean_with_the_longer_label_first():
    words, labels = WORDS.flip(-1), torch.tensor([1, 1, 1, 0])  # label 1 with three words, then label 0
    expected = torch.tensor([[-1.0, (-2.0 - 4.0 - 0.5) / 3], [-3.0, (-1.0 - 1.0 - 7.0) / 3]])
    assert torch.allclose(aggregate(words, labels, 2, "mean"), expected)


def test_logsumexp_is_the_log_of_the_summed_word_probabilities():
    expected = torch.tensor([
        [-1.0, torch.tensor([-2.0, -4.0, -0.5]).exp().sum().log().item()],
        [-3.0, torch.tensor([-1.0, -1.0, -7.0]).exp().sum().log().item()],
    ])
    assert torch.allclose(aggregate(WORDS, WORD_LABELS, 2, "logsumexp"), expected)


def test_max_takes_each_labels_best_word():
    assert torch.equal(aggregate(WORDS, WORD_LABELS, 2, "max"), torch.tensor([[-1.0, -0.5], [-3.0, -1.0]]))


def test_three_labels_with_one_two_and_three_words():
    words = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]])
    labels = torch.tensor([2, 0, 1, 2, 1, 2])  # label 0: -2; label 1: -3, -5; label 2: -1, -4, -6
    assert torch.allclose(aggregate(words, labels, 3, "mean"), torch.tensor([[-2.0, -4.0, -11.0 / 3]]))
    assert torch.equal(aggregate(words, labels, 3, "max"), torch.tensor([[-2.0, -3.0, -1.0]]))


# ---------------------------------------------------------------- aggregation, through the method

PATTERN = "{text} It was {mask}."
VERBALIZER = "negative=bad positive=great,good,fine"  # single-token words in bert-tiny's vocabulary
POSITIVE_WORDS, NEGATIVE_WORD = ["great", "good", "fine"], "bad"


def cloze_config(task_path: str = "sst-2", **options) -> RunConfig:
    method_options = {"patterns": [PATTERN], "verbalizer": VERBALIZER, **options}
    # float32: the values are compared with the model's own float32 log-probabilities (`auto` would
    # pick bfloat16 on a CPU that computes it natively)
    return RunConfig(task=task_path, model="bert-tiny", method="pet", method_options=method_options, train="full",
                     dtype="float32")


def word_log_probs(backbone, texts: list[str], words: list[str]) -> torch.Tensor:
    """log p(word at the mask) of each text in the pattern, straight from the masked LM's logits."""
    tokenizer = backbone.tokenizer
    backbone.model.eval()  # no dropout: scoring (the method's) is in eval mode too
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    rows = []
    for text in texts:
        encoded = tokenizer(PATTERN.format(text=text, mask=tokenizer.mask_token), return_tensors="pt")
        position = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
        with torch.no_grad():
            logits = backbone.model(**encoded).logits[0, position]
        rows.append(logits.log_softmax(-1)[ids])
    return torch.stack(rows)


@pytest.mark.parametrize("how", ["logsumexp", "mean", "max"])
def test_method_combines_label_words_as_aggregate_says(tiny_mlm, task, how):
    method = build_method(cloze_config(aggregate=how), task, backbone=tiny_mlm)
    texts = [e.text for e in task.test]
    scores = method.label_scores(task.test)
    positive = word_log_probs(tiny_mlm, texts, POSITIVE_WORDS)
    negative = word_log_probs(tiny_mlm, texts, [NEGATIVE_WORD])[:, 0]
    combine = {"logsumexp": lambda s: s.logsumexp(-1), "mean": lambda s: s.mean(-1), "max": lambda s: s.amax(-1)}[how]
    # A label score is a log-probability up to a constant per example: compare label differences.
    assert torch.allclose(scores[:, 1] - scores[:, 0], combine(positive) - negative, atol=1e-4)


def test_a_multi_token_word_scores_the_log_probabilities_of_its_tokens_at_their_masks(tiny_mlm, task):
    """The word "abysmal" is three tokens in bert-tiny's vocabulary, "great" one: a word's score is the sum of
    log p(its k-th token at the k-th of as many masks as it has tokens), by hand from the model's logits."""
    method = build_method(cloze_config(verbalizer="negative=abysmal positive=great"), task, backbone=tiny_mlm)
    scores = method.label_scores(task.test)
    tokenizer = tiny_mlm.tokenizer
    tiny_mlm.model.eval()

    def word_score(text: str, word: str) -> float:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        encoded = tokenizer(PATTERN.format(text=text, mask=tokenizer.mask_token * len(ids)), return_tensors="pt")
        positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().squeeze(1)
        with torch.no_grad():
            log_probs = tiny_mlm.model(**encoded).logits[0, positions].log_softmax(-1)
        return float(sum(log_probs[k, token] for k, token in enumerate(ids)))

    assert len(tokenizer(" abysmal", add_special_tokens=False)["input_ids"]) == 3
    by_hand = torch.tensor([word_score(e.text, "great") - word_score(e.text, "abysmal") for e in task.test])
    assert torch.allclose(scores[:, 1] - scores[:, 0], by_hand, atol=1e-4)


def test_the_three_aggregations_give_different_label_scores(tiny_mlm, task):
    differences = []
    for how in ("logsumexp", "mean", "max"):
        method = build_method(cloze_config(aggregate=how), task, backbone=tiny_mlm)
        scores = method.label_scores(task.test)
        differences.append(scores[:, 1] - scores[:, 0])
    for i in range(3):
        for j in range(i + 1, 3):
            assert (differences[i] - differences[j]).abs().max() > 1e-3


# ---------------------------------------------------------------- the auxiliary LM loss


def first_step_loss(backbone, task, **options) -> float:
    config = RunConfig(
        task="sst-2", model="tiny", method="pet",
        method_options={"patterns": ["{text} It was {mask}"], "verbalizer": "negative=bad positive=great", **options},
        train="full", training=TrainConfig(steps=1, batch_size=8, body_lr=1e-3, warmup_ratio=0.0),
    )
    method = build_method(config, task, backbone=backbone)
    items = method.featurize(task.train, progress=False)
    result = recipes.fit(method, Trainer(config.training, progress=False, log=None), items, task.targets(task.train))
    return result.history[0]["loss"]


def causal_lm_loss(backbone, text: str) -> float:
    """The causal LM's own loss on the pattern's text before the mask, outside pretune."""
    ids = backbone.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return backbone.model(input_ids=ids, labels=ids).loss.item()


def test_auxiliary_lm_loss_is_added_with_its_weight(tmp_path, task):
    """Step 1's loss is the task loss plus weight x the LM loss on the unlabelled text (one text, so
    the random pick cannot matter): linear in the weight, with the LM loss as its slope."""
    unlabelled = tmp_path / "unlabelled.jsonl"
    text = "the plot moves slowly but the actors are good"
    unlabelled.write_text(json.dumps({"text": text}) + "\n")
    lm_loss = causal_lm_loss(_tiny("causal", "smollm2-135m"), f"{text} It was")
    losses = {
        weight: first_step_loss(_tiny("causal", "smollm2-135m"), task, aux_lm_weight=weight, unlabelled=str(unlabelled))
        for weight in (0.0, 0.5, 1.0)
    }
    assert lm_loss > 1.0  # a random model: far from zero, so the terms below are told apart
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * lm_loss, rel=1e-4)
    assert losses[1.0] - losses[0.0] == pytest.approx(lm_loss, rel=1e-4)


def test_without_unlabelled_texts_the_auxiliary_loss_reads_the_training_texts(task):
    """No --unlabelled: the auxiliary loss is the LM loss on the training texts. Both training examples
    hold one text, so whichever the loss picks, its slope in the weight is that text's LM loss."""
    text = "the plot moves slowly but the actors are good"
    one_text = Task("sst-2", task.labels, "accuracy", train=[Example(text, label="positive"), Example(text, label="negative")])
    lm_loss = causal_lm_loss(_tiny("causal", "smollm2-135m"), f"{text} It was")
    losses = {weight: first_step_loss(_tiny("causal", "smollm2-135m"), one_text, aux_lm_weight=weight) for weight in (0.0, 1.0)}
    assert lm_loss > 1.0  # a random model: the slope is told apart from no auxiliary loss at all
    assert losses[1.0] - losses[0.0] == pytest.approx(lm_loss, rel=1e-4)



def test_zero_shot_evaluation_matches_the_scored_accuracy(task_folder, tiny_mlm):
    config = cloze_config(str(task_folder))
    metrics = evaluate_untrained(config, progress=False, backbone=tiny_mlm)
    method = build_method(config, _task_of(task_folder), backbone=tiny_mlm)
    data = _task_of(task_folder)
    predictions = method.label_scores(data.test).argmax(-1)
    expected = float((predictions == torch.tensor(data.targets(data.test))).float().mean())
    assert metrics["test"]["accuracy"] == pytest.approx(expected)


def _task_of(folder):
    from pretune.data import load_task

    return load_task(str(folder))


# ---------------------------------------------------------------- the masked LM's auxiliary rows

SOFT_PATTERN = "[P] {text} [P*2] It was {mask} [P] indeed."  # soft tokens before and after the mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_lm_auxiliary_rows_mask_fifteen_percent_of_the_plain_text_tokens(tiny_mlm, task, seed):
    """Every row: max(1, round(0.15 n)) of its n plain tokens are masked and become the labels; never
    the special tokens, the pattern's own mask or a soft token; everything else is left as it was."""
    method = build_method(RunConfig(task="sst-2", model="bert-tiny", method="ptuning",
                                    method_options={"patterns": [SOFT_PATTERN]}), task, backbone=tiny_mlm)
    examples = [task.train[7], task.train[0], task.train[5]]  # "a bore", then longer texts
    rendered = method.featurize(examples, progress=False)
    torch.manual_seed(seed)
    batch = method.lm.language_modelling_batch(rendered, method.prompt.renderer)
    tokenizer, mask_id = tiny_mlm.tokenizer, tiny_mlm.tokenizer.mask_token_id
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    for row, r in enumerate(rendered):
        original = r.prefix + [mask_id] + r.suffix
        soft = set(r.soft_in_prefix) | {len(r.prefix) + 1 + i for i in r.soft_in_suffix}
        plain = [i for i, t in enumerate(original) if t not in special and i != len(r.prefix) and i not in soft]
        labels = batch.labels[row, : len(original)].tolist()
        masked = [i for i, label in enumerate(labels) if label != -100]
        assert len(masked) == max(1, round(0.15 * len(plain))), (row, len(plain))
        assert set(masked) <= set(plain)
        assert all(labels[i] == original[i] for i in masked)
        inputs = batch.input_ids[row, : len(original)].tolist()
        assert inputs == [mask_id if i in masked else t for i, t in enumerate(original)]
        assert (batch.labels[row, len(original) :] == -100).all()


def test_the_only_plain_token_is_the_one_masked_never_a_soft_token_after_the_pattern_mask(tiny_mlm, task):
    """One plain token ("bore") between soft tokens, three of them after the mask: whatever the draw,
    the one masked token is "bore" (a soft token's answer is not a word of the text)."""
    from pretune.data import Example

    method = build_method(RunConfig(task="sst-2", model="bert-tiny", method="ptuning",
                                    method_options={"patterns": ["[P] {text} {mask} [P*3]"]}), task, backbone=tiny_mlm)
    (rendered,) = method.featurize([Example("bore")], progress=False)
    bore = tiny_mlm.tokenizer.convert_tokens_to_ids("bore")
    assert rendered.prefix[2] == bore and rendered.soft_in_suffix == [0, 1, 2]
    for seed in range(8):
        torch.manual_seed(seed)
        batch = method.lm.language_modelling_batch([rendered], method.prompt.renderer)
        assert batch.labels[0].tolist() == [-100, -100, bore, -100, -100, -100, -100, -100], seed


def test_one_plain_token_is_masked_when_fifteen_percent_rounds_to_zero(tiny_mlm, task):
    from pretune.data import Example

    method = build_method(cloze_config(patterns=["{text} It was {mask}."]), task, backbone=tiny_mlm)
    rendered = method.featurize([Example("bore")], progress=False)
    batch = method.lm.language_modelling_batch(rendered, method.prompt.renderer)
    assert int((batch.labels != -100).sum()) == 1  # 4 plain tokens: round(0.6) = 1


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_texts_with_nothing_to_predict_give_no_auxiliary_batch_and_no_auxiliary_loss(task, kind):
    """Empty texts in a pattern of soft tokens and the mask: no token is left to predict (masked LM) or
    every one is soft (causal LM). Then there is no batch, and the auxiliary loss adds nothing (a loss
    over no tokens would be NaN)."""
    from pretune.data import Example

    model = {"mlm": "bert-tiny", "causal": "tiny"}[kind]
    backbone = _tiny(kind, {"mlm": "bert-tiny", "causal": "smollm2-135m"}[kind])
    config = RunConfig(task="sst-2", model=model, method="ptuning", method_options={"patterns": ["[P*2] {text} {mask}"]})
    method = build_method(config, task, backbone=backbone)
    rendered = method.featurize([Example(""), Example("")], progress=False)
    assert method.lm.language_modelling_batch(rendered, method.prompt.renderer) is None
    method.train()
    assert recipes.AuxiliaryLM(method, rendered, weight=1.0, batch_size=2)() is None
    with_text = method.featurize([Example("a bore")], progress=False)
    assert recipes.AuxiliaryLM(method, with_text, weight=1.0, batch_size=2)() is not None


def test_causal_auxiliary_rows_predict_every_token_but_the_soft_ones(tiny_causal, task):
    method = build_method(RunConfig(task="sst-2", model="tiny", method="ptuning",
                                    method_options={"patterns": ["[P] {text} [P*2] It was {mask}"]}), task, backbone=tiny_causal)
    rendered = method.featurize(task.train[:3], progress=False)
    batch = method.lm.language_modelling_batch(rendered, method.prompt.renderer)
    for row, r in enumerate(rendered):
        tokens = r.prefix + r.suffix
        soft = set(r.soft_in_prefix) | {len(r.prefix) + i for i in r.soft_in_suffix}
        assert len(soft) == 3
        assert batch.input_ids[row, : len(tokens)].tolist() == tokens
        assert batch.labels[row, : len(tokens)].tolist() == [-100 if i in soft else t for i, t in enumerate(tokens)]
        assert batch.attention_mask[row].tolist() == [1] * len(tokens) + [0] * (batch.input_ids.shape[1] - len(tokens))


def test_auxiliary_loss_of_a_padded_batch_equals_the_rows_losses_computed_alone(task):
    """Texts of different lengths in one masked-LM batch: padding must change nothing. The loss is the
    mean over every masked token of the rows, each row computed alone, unpadded."""
    backbone = _tiny("mlm", "bert-tiny")
    for module in backbone.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the loss is compared by value: no dropout noise
    method = build_method(cloze_config(patterns=["{text} It was {mask}."]), task, backbone=backbone)
    short, long = task.train[3], task.train[1]  # "a delight", "great acting and a lovely story"
    items = method.featurize([short, long], progress=False)
    auxiliary = recipes.AuxiliaryLM(method, items, weight=2.0, batch_size=2)
    method.train()
    torch.manual_seed(0)
    picks = torch.randint(2, (2,)).tolist()  # [0, 1] with this seed: the short text and the long one
    batch = method.lm.language_modelling_batch([items[p] for p in picks], method.prompt.renderer)  # the same draws
    torch.manual_seed(0)
    loss = auxiliary().item()
    assert picks == [0, 1]
    total, count = 0.0, 0
    for row, pick in enumerate(picks):
        length = len(items[pick].prefix) + 1 + len(items[pick].suffix)
        ids, labels = batch.input_ids[row : row + 1, :length], batch.labels[row : row + 1, :length]
        with torch.no_grad():
            row_loss = backbone.model(input_ids=ids, labels=labels).loss.item()
        masked = int((labels != -100).sum())
        total, count = total + row_loss * masked, count + masked
    assert loss == pytest.approx(2.0 * total / count, rel=1e-5)


def test_a_verbalizer_prints_as_it_parses_with_semicolons_only_where_a_name_holds_a_space():
    from pretune.cloze.verbalizer import Verbalizer

    plain = Verbalizer.parse("negative=bad positive=good,great")
    spaced_label = Verbalizer.parse("very negative=awful; positive=good")
    spaced_word = Verbalizer.parse("negative=not good; positive=good")
    assert str(plain) == "negative=bad positive=good,great"
    assert str(spaced_label) == "very negative=awful; positive=good"
    assert str(spaced_word) == "negative=not good; positive=good"
    assert all(Verbalizer.parse(str(v)) == v for v in (plain, spaced_label, spaced_word))


# ---------------------------------------------------------------- the open-vocabulary readout


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_vocabulary_logits_from_the_body_s_hidden_states_are_the_models_own_logits(kind):
    """Every position's logits over the whole vocabulary (knowledge probing's readout), from the body's
    hidden states through the head's transform and output layer, equal the full model's."""
    backbone = _tiny(kind, "bert-tiny" if kind == "mlm" else "smollm2-135m")
    backbone.model.eval()
    encoded = backbone.tokenizer("the capital of france is paris", return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.body(**encoded).last_hidden_state[0]
        logits = LabelWordScorer(backbone).vocabulary_logits(hidden)
        expected = backbone.model(**encoded).logits[0]
    assert logits.shape == (encoded["input_ids"].size(1), len(backbone.tokenizer))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
