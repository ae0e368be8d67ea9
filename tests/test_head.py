from dataclasses import replace

import pytest
import torch

from pretune.data import Example
from pretune.methods import HeadConfig, HeadMethod
from pretune.training.evaluation import evaluate
from pretune.training.trainer import TrainConfig, Trainer
from pretune.tuning import BodyTraining


def make(backbone, task, training="frozen", **options):
    return HeadMethod(backbone, task, HeadConfig(**options), BodyTraining.parse(training))


def test_frozen_body_caches_features_that_equal_the_live_path(tiny_causal, task):
    method = make(tiny_causal, task)
    cached = method.featurize(task.train, progress=False)
    assert set(cached[0]) == {"features"}
    live = method._tokenize(task.train)
    assert torch.allclose(method.score_items(cached), method.score_items(live), atol=1e-5)


def test_unfrozen_body_is_not_cached_and_trains_the_body(tiny_mlm, task):
    method = make(tiny_mlm, task, training="full")
    items = method.featurize(task.train, progress=False)
    assert "input_ids" in items[0]
    before = tiny_mlm.model.bert.encoder.layer[0].attention.self.query.weight.clone()
    Trainer(TrainConfig(steps=3, lr=1e-2, body_lr=1e-2), progress=False, log=None).fit(method, items, task.targets(task.train))
    assert not torch.equal(before, tiny_mlm.model.bert.encoder.layer[0].attention.self.query.weight)


def hidden_states_alone(backbone, text: str) -> torch.Tensor:
    """The body's last hidden states [T, H] of one text, unpadded, outside the method."""
    ids = backbone.tokenizer(text, return_tensors="pt")["input_ids"]
    backbone.model.eval()
    with torch.no_grad():
        return backbone.body(input_ids=ids).last_hidden_state[0]


POOLED = {"cls": lambda h: h[0], "last": lambda h: h[-1], "mean": lambda h: h.mean(dim=0)}


@pytest.mark.parametrize("pooling", sorted(POOLED))
def test_pooling_by_hand_on_texts_of_different_lengths(tiny_encoder, task, pooling):
    """cls: the first token's state; last: the last real token's; mean: the mean over real tokens
    (padding excluded): each example batched with a longer one equals its own unpadded computation."""
    method = make(tiny_encoder, task, pooling=pooling)
    examples = [Example("a delight", label="positive"), Example("a dull and lifeless film with a silly plot", label="negative")]
    features = method.featurize(examples, progress=False)
    for example, item in zip(examples, features):
        expected = POOLED[pooling](hidden_states_alone(tiny_encoder, example.text))
        assert torch.allclose(item["features"], expected, atol=1e-5)


def test_the_three_poolings_differ(tiny_encoder, task):
    pooled = [make(tiny_encoder, task, pooling=p).featurize(task.test[:1], progress=False)[0]["features"] for p in POOLED]
    assert all((a - b).abs().max() > 1e-3 for i, a in enumerate(pooled) for b in pooled[i + 1 :])


def test_mlp_head_scores_are_its_layers_applied_by_hand(tiny_encoder, task):
    method = make(tiny_encoder, task, head="mlp", hidden=16, dropout=0.0)
    items = method.featurize(task.test, progress=False)
    features = torch.stack([item["features"] for item in items])
    first, last = method.head[1], method.head[4]
    expected = torch.nn.functional.gelu(features @ first.weight.T + first.bias) @ last.weight.T + last.bias
    assert torch.allclose(method.score_items(items), expected, atol=1e-5)


def test_causal_last_token_pooling_ignores_right_padding(tiny_causal, task):
    method = make(tiny_causal, task)
    short = [Example("a delight", label="positive")]
    alone = method.score_items(method._tokenize(short))
    padded = method.score_items(method._tokenize(short + [Example("a much much longer sentence than that one", label="negative")]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_head_learns_on_a_real_encoder(minilm, task):
    method = make(minilm, task, pooling="mean")
    items = method.featurize(task.train, progress=False)
    result = Trainer(TrainConfig(epochs=30, lr=1e-2), progress=False, log=None).fit(method,
        items, task.targets(task.train), items, task.targets(task.train)
    )
    metrics, _ = evaluate(method, task.train, task.targets(task.train))
    assert metrics["accuracy"] == 1.0 and result.best_dev == 1.0


def test_head_on_real_causal_and_masked_models(smollm2, bert_tiny, task):
    for backbone in (smollm2, bert_tiny):
        method = make(backbone, task)
        items = method.featurize(task.train, progress=False)
        Trainer(TrainConfig(epochs=30, lr=1e-2), progress=False, log=None).fit(method, items, task.targets(task.train))
        assert method.trainable_parameter_count() == backbone.hidden_size * 2 + 2
        assert evaluate(method, task.train, task.targets(task.train))[0]["accuracy"] >= 0.75


@pytest.mark.parametrize("labels, columns", [(["negative", "positive"], 2), (None, 1)])
def test_no_items_score_to_an_empty_table_with_one_column_per_label(tiny_causal, task, labels, columns):
    method = make(tiny_causal, replace(task, labels=labels, metric="accuracy" if labels else "pearson"))
    assert method.score_items([]).shape == (0, columns)
