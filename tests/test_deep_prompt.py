"""Deep prompts (P-tuning v2 / prefix tuning): key/value prefixes at every layer of masked and
causal LMs, the reparameterisation MLP, materialisation, and save -> load -> predict on real models."""

import json

import pytest
import torch

from conftest import _tiny
from pretune.api import RunConfig, load_run, train_run
from pretune.cli import main
from pretune.cloze.prefix import model_key_values
from pretune.data import Example
from pretune.errors import UserError
from pretune.methods import ClozeMethod, build_method
from pretune.runs import load_weights
from pretune.training.trainer import TrainConfig, Trainer
from pretune.tuning import BodyTraining

PATTERN = "{text} It was {mask}."


def make(backbone, task, training="frozen", **options) -> ClozeMethod:
    options = {"patterns": [PATTERN], "prompt_length": 3, **options}
    return build_method("deep-prompt", backbone, task, options, BodyTraining.parse(training))


def train(method, task, steps=4):
    items = method.featurize(task.train)
    Trainer(TrainConfig(steps=steps, batch_size=8, lr=3e-2), progress=False, log=None).fit(method, items, task.targets(task.train))


def test_a_causal_prefix_of_the_models_own_keys_and_values_equals_those_tokens_written_first(tiny_causal, task):
    """Positions continue after the prefix, so a prefix holding what the model computes for some
    tokens is exactly those tokens in front of the input: the cache path adds nothing else."""
    method = make(tiny_causal, task).eval()
    tokens = torch.tensor([17, 423, 1005])
    with torch.no_grad():
        method.prefix.key_values.copy_(model_key_values(tiny_causal.body, tiny_causal.model.config, tokens))
    batch = method.collate(method.featurize(task.test[:3]))
    rows = batch.input_ids.shape[0]
    with torch.no_grad():
        through_prefix = method.hidden_states(batch)
        written = torch.cat([tokens.expand(rows, -1), batch.input_ids], dim=1)
        mask = torch.cat([torch.ones(rows, 3, dtype=torch.long), batch.attention_mask], dim=1)
        expected = tiny_causal.body(input_ids=written, attention_mask=mask).last_hidden_state[:, 3:]
    real = batch.attention_mask.bool()
    assert torch.allclose(through_prefix[real], expected[real], atol=1e-5)


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_every_layer_reads_its_prefix(task, kind):
    backbone = _tiny(kind, "bert-tiny" if kind == "mlm" else "smollm2-135m")
    method = make(backbone, task).eval()
    items = method.featurize(task.test[:2])
    before = method.score_items(items)
    layers = method.prefix.key_values.shape[0]
    assert layers == backbone.model.config.num_hidden_layers
    for layer in range(layers):
        with torch.no_grad():
            method.prefix.key_values[layer] += 1.0
        assert not torch.allclose(method.score_items(items), before, atol=1e-4), f"layer {layer}"
        with torch.no_grad():
            method.prefix.key_values[layer] -= 1.0


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_frozen_body_only_the_prefix_trains_and_gradients_reach_it(task, kind):
    backbone = _tiny(kind, "bert-tiny" if kind == "mlm" else "smollm2-135m")
    method = make(backbone, task)
    assert [name for name, p in method.named_parameters() if p.requires_grad] == ["prefix.key_values"]
    start = method.prefix.key_values.detach().clone()
    train(method, task)
    assert not torch.equal(method.prefix.key_values, start)
    assert all(p.grad is None for p in method.model.parameters())


def test_reparameterised_prefix_starts_as_the_plain_one_and_materialises_to_it(tiny_mlm, task):
    torch.manual_seed(3)
    plain = make(tiny_mlm, task)
    torch.manual_seed(3)
    reparam = make(tiny_mlm, task, reparam=True)
    items = reparam.featurize(task.test)
    assert torch.allclose(reparam.score_items(items), plain.score_items(items), atol=1e-6)  # the MLP's last layer starts at zero
    train(reparam, task)
    trained = reparam.trainable_parameter_count()
    before = reparam.score_items(items)
    reparam.finalize()
    state = reparam.trainable_state_dict()
    assert list(state) == ["prefix.key_values"] and state["prefix.key_values"].shape == (2, 2, 4, 3, 8)
    assert reparam.trainable_parameter_count() == trained > state["prefix.key_values"].numel()
    fresh = make(_tiny("mlm", "bert-tiny"), task, reparam=True)
    fresh.load_trainable_state_dict(state)
    assert fresh.prefix.mlp is None
    assert torch.allclose(fresh.score_items(items), before, atol=1e-5)


def test_the_prefix_takes_positions_from_the_input(tiny_mlm, task):
    reference = build_method("pet", tiny_mlm, task, {"patterns": [PATTERN]}, BodyTraining.parse("frozen"))
    method = make(tiny_mlm, task, prompt_length=100, max_length=1000)
    assert method.max_length == reference.max_length - 100 == 256 - 100  # the tiny model has 256 positions
    long = Example("word " * 400)
    batch = method.collate(method.featurize([long]))
    assert batch.input_ids.shape[1] + 100 <= 256
    method.score_items(method.featurize([long]))  # would fail past the position table


def test_refusals(tiny_causal, task):
    with pytest.raises(UserError, match="soft tokens need --method ptuning"):
        make(tiny_causal, task, patterns=["[P*2]{text} It was {mask}."])
    with pytest.raises(UserError, match=r"--prompt-length must be a whole number in \[1, 4096\]"):
        make(tiny_causal, task, prompt_length=0)
    with pytest.raises(UserError, match="--method deep-prompt trains one template"):
        make(tiny_causal, task, patterns=[PATTERN, PATTERN])


def test_resumed_run_with_reparameterisation_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    from test_checkpoint import assert_resumed_equals_straight, tiny_config

    config = tiny_config(tmp_path, method="deep-prompt", train="frozen", patterns=[PATTERN], prompt_length=2, reparam=True)
    assert_resumed_equals_straight(config, tmp_path, monkeypatch, 6)
    assert list(load_weights(tmp_path / "straight" / "adapter.safetensors")) == ["prefix.key_values"]


# ---------------------------------------------------------------- real models, end to end


@pytest.mark.slow
@pytest.mark.parametrize(("model", "readout"), [("bert-tiny", "verbalizer"), ("smollm2-135m", "head")])
def test_cli_train_then_predict_gives_the_saved_predictions(tmp_path, task_folder, capsys, model, readout):
    out = tmp_path / "run"
    code = main(["train", "--task", str(task_folder), "--model", model, "--method", "deep-prompt", "--prompt-length", "4",
                 "--readout", readout, "--steps", "2", "--batch-size", "4", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    weights = load_weights(out / "adapter.safetensors")
    layers = 2 if model == "bert-tiny" else 30
    assert weights["prefix.key_values"].shape[:4] == (layers, 2, weights["prefix.key_values"].shape[2], 4)
    assert metrics["adapter_bytes"] < 1_000_000
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--input", str(task_folder / "test.jsonl")]) == 0
    fresh = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for row, again in zip(saved, fresh):
        assert again["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)
    predictor = load_run(out)
    api = predictor.predict([Example(row["text"]) for row in saved])
    assert [r["prediction"] for r in api] == [r["prediction"] for r in saved]


@pytest.mark.slow
def test_api_reparameterised_deep_prompt_on_smollm2(tmp_path, task_folder):
    training = TrainConfig(steps=2, batch_size=4, eval_batch_size=8)
    config = RunConfig(task=str(task_folder), model="smollm2-135m", method="deep-prompt", training=training,
                       method_options={"prompt_length": 2, "reparam": True})
    result = train_run(config, out=tmp_path / "run", progress=False)
    assert list(load_weights(tmp_path / "run" / "adapter.safetensors")) == ["prefix.key_values"]
    assert result.metrics["trainable_parameters"] > 30 * 2 * 2 * 3 * 64  # the MLP trained too
    saved = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    for row, fresh in zip(saved, load_run(tmp_path / "run").predict([Example(r["text"]) for r in saved])):
        assert fresh["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)
