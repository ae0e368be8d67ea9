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


def test_poolings_and_mlp_head(tiny_encoder, task):
    for pooling in ("cls", "last", "mean"):
        method = make(tiny_encoder, task, pooling=pooling, head="mlp", hidden=16)
        scores = method.score_items(method.featurize(task.test, progress=False))
        assert scores.shape == (len(task.test), 2) and torch.isfinite(scores).all()


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
