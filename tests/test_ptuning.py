"""P-tuning: soft tokens in templates, prompt encoders, frozen and joint training, the two readouts,
materialisation, and save -> load -> predict on real models."""

import json

import pytest
import torch

from conftest import _tiny, sentiment_task
from pretune.api import RunConfig, evaluate_untrained, load_run, resume_run, train_run
from pretune.cli import main
from pretune.cloze.prompt import built_in_prompts, ptuning_template
from pretune.cloze.soft import ENCODERS
from pretune.data import Example
from pretune.errors import UserError
from pretune.methods import ClozeMethod, build_method
from pretune.methods.cloze import DEFAULT_BODY_RATE, ENCODER_RATES
from pretune.runs import load_weights
from pretune.training.trainer import TrainConfig, Trainer, optimizer_groups
from pretune.tuning import BodyTraining
from run_folders import assert_same_run
from scored import accuracy_by_hand

ANCHORED = "{text} It [P:was] {mask}."  # one soft token, starting as the word " was"
TEMPLATE = "[P*2]{text} [P] It was {mask}."


def make(backbone, task, training="frozen", **options) -> ClozeMethod:
    return build_method("ptuning", backbone, task, options, BodyTraining.parse(training))


def pet(backbone, task, pattern):
    return build_method("pet", backbone, task, {"patterns": [pattern]}, BodyTraining.parse("frozen"))


def groups_of(method, **rates):
    return {g["name"]: g for g in optimizer_groups(method, TrainConfig(**rates))}


def train(method, task, steps=6, **settings):
    items = method.featurize(task.train)
    config = TrainConfig(steps=steps, batch_size=8, **{"lr": 3e-2, **settings})
    return Trainer(config, progress=False, log=None).fit(method, items, task.targets(task.train))


# ---------------------------------------------------------------- soft tokens and encoders


@pytest.mark.parametrize("encoder", ENCODERS)
def test_untrained_prompt_of_anchor_words_scores_exactly_like_pet_with_those_words(tiny_mlm, tiny_causal, task, encoder):
    """Encoders add a residual whose last layer starts at zero: [P:was] *is* " was" until training."""
    for backbone in (tiny_mlm, tiny_causal):
        reference = pet(backbone, task, "{text} It was {mask}.")
        method = make(backbone, task, patterns=[ANCHORED], encoder=encoder)
        expected = reference.score_items(reference.featurize(task.test))
        assert torch.allclose(method.score_items(method.featurize(task.test)), expected, atol=1e-5)


def test_soft_tokens_replace_the_embeddings_at_their_positions_in_every_row(tiny_causal, task):
    method = make(tiny_causal, task, patterns=[TEMPLATE], verbalizer="positive=great,phenomenally negative=bad")
    batch = method.collate(method.featurize(task.test[:3]))
    embeds = method.input.body_inputs(method.model, batch)["inputs_embeds"]
    plain = tiny_causal.model.get_input_embeddings()(batch.input_ids)
    soft = batch.soft_mask
    prompt = method.soft_prompt()
    assert soft.sum(dim=1).tolist() == [3] * soft.shape[0]  # several rows per example (multi-token words)
    for row in range(soft.shape[0]):
        assert torch.equal(embeds[row][soft[row]], prompt)
        assert torch.equal(embeds[row][~soft[row]], plain[row][~soft[row]])


def test_random_soft_tokens_are_scaled_like_the_vocabulary(tiny_causal, task):
    method = make(tiny_causal, task, patterns=["[P*64]{text} It was {mask}."], encoder="none")
    vocabulary = tiny_causal.model.get_input_embeddings().weight
    ratio = method.soft_prompt().std() / vocabulary.std()
    assert 0.8 < ratio < 1.25


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("encoder", ENCODERS)
def test_frozen_body_trains_only_the_prompt(tiny_mlm, task, encoder):
    method = make(tiny_mlm, task, patterns=[TEMPLATE], encoder=encoder)
    body_before = {k: v.clone() for k, v in tiny_mlm.model.state_dict().items()}
    trainable = [name for name, p in method.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("soft_prompt.") for name in trainable)
    prompt_before = method.soft_prompt().detach().clone()
    train(method, task, steps=4)
    assert not torch.allclose(method.soft_prompt(), prompt_before)
    # No gradient and no optimizer state for the body: nothing of it changed or was even touched.
    assert all(p.grad is None for p in method.model.parameters())
    assert all(torch.equal(body_before[k], v) for k, v in tiny_mlm.model.state_dict().items())


def test_training_the_prompt_lowers_the_training_loss(tiny_causal, task):
    method = make(tiny_causal, task, patterns=["[P*4]{text} It was {mask}."], encoder="lstm", readout="head")
    result = train(method, task, steps=20, eval_every=10)
    first, last = (row["loss"] for row in result.history)
    assert last < first


def test_joint_training_has_a_higher_rate_for_the_prompt_than_for_the_body(tiny_mlm, task):
    method = make(tiny_mlm, task, training="full", patterns=[TEMPLATE])
    groups = groups_of(method)
    assert groups["prompt"]["lr"] == ENCODER_RATES["lstm"] > groups["body"]["lr"] == DEFAULT_BODY_RATE
    prompt_tuning = make(_tiny("mlm", "bert-tiny"), task, patterns=[TEMPLATE], encoder="none")
    assert groups_of(prompt_tuning)["prompt"]["lr"] == ENCODER_RATES["none"]
    assert {id(p) for p in groups["prompt"]["params"]} == {id(p) for p in method.soft_prompt.parameters()}
    groups = groups_of(method, lr=2e-2, body_lr=3e-5)
    assert (groups["prompt"]["lr"], groups["body"]["lr"]) == (2e-2, 3e-5)
    train(method, task, steps=2, lr=1e-2, body_lr=1e-3)
    assert method.model.get_input_embeddings().weight.grad is not None  # the body trains too


def test_head_readout_reads_the_mask_or_the_token_before_the_label(tiny_mlm, tiny_causal, task):
    for backbone in (tiny_mlm, tiny_causal):
        method = make(backbone, task, patterns=["[P*2]{text} It was {mask}, truly."], readout="head").eval()
        items = method.featurize(task.test[:2])
        batch = method.collate(items)
        assert batch.input_ids.shape[0] == 2 and len(batch.target_row) == 2  # one row, one position each
        with torch.no_grad():
            inputs_embeds = method.input.body_inputs(method.model, batch)["inputs_embeds"]
            hidden = backbone.body(inputs_embeds=inputs_embeds, attention_mask=batch.attention_mask)
            rendered = items[0]
            position = len(rendered.prefix) if backbone.kind == "mlm" else len(rendered.prefix) - 1
            expected = method.head(hidden.last_hidden_state[0, position])
            assert torch.allclose(method(method.collate(items[:1]))[0], expected, atol=1e-5)
        if backbone.kind == "causal":  # nothing after the label can matter to a causal LM: not even fed
            assert batch.attention_mask[0].sum() == len(rendered.prefix)


# ---------------------------------------------------------------- materialisation and saving


@pytest.mark.parametrize("encoder", ENCODERS)
def test_finalize_materialises_the_prompt_and_a_fresh_method_loads_it(tiny_mlm, task, encoder):
    method = make(tiny_mlm, task, patterns=[TEMPLATE], encoder=encoder, readout="head")
    train(method, task, steps=3)
    trained = method.trainable_parameter_count()
    items = method.featurize(task.test)
    before = method.score_items(items)
    method.finalize()
    state = method.trainable_state_dict()
    assert sorted(state) == ["head.1.bias", "head.1.weight", "soft_prompt.embeddings"]
    assert state["soft_prompt.embeddings"].shape == (3, tiny_mlm.hidden_size)
    assert method.trainable_parameter_count() == trained  # what trained, reported after materialising
    assert torch.allclose(method.score_items(items), before, atol=1e-5)
    fresh = make(_tiny("mlm", "bert-tiny"), task, patterns=[TEMPLATE], encoder=encoder, readout="head")
    fresh.load_trainable_state_dict(state)
    assert fresh.soft_prompt.materialized
    assert torch.allclose(fresh.score_items(items), before, atol=1e-5)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """A checkpoint holds the encoder (training goes on with it); the finished run only the prompt."""
    from test_checkpoint import Crash, crash_after, tiny_bert, tiny_config

    config = tiny_config(tmp_path, method="ptuning", train="frozen", patterns=[TEMPLATE], encoder="lstm")
    train_run(config, tmp_path / "straight", progress=False, backbone=tiny_bert())
    crash_after(monkeypatch, 0, 5)
    with pytest.raises(Crash):
        train_run(config, tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert any(".lstm." in k for k in load_weights(tmp_path / "crashed" / "checkpoint" / "state.safetensors"))
    monkeypatch.undo()
    resume_run(tmp_path / "crashed", progress=False, backbone=tiny_bert())
    assert_same_run(tmp_path / "crashed", tmp_path / "straight")
    assert list(load_weights(tmp_path / "straight" / "adapter.safetensors")) == ["soft_prompt.embeddings"]


# ---------------------------------------------------------------- templates and refusals


def test_prompt_length_puts_soft_tokens_in_front_of_the_pet_pattern(tiny_causal, task):
    method = make(tiny_causal, task, encoder="none", prompt_length=5)
    assert str(method.prompt.pattern) == "[P*5]Review: {text}\nSentiment: {mask}"
    method = make(tiny_causal, task)  # no template given: the built-in one, made from the PET pattern
    assert method.prompt.pattern == ptuning_template(built_in_prompts("sst-2", "causal")[0].pattern)
    assert method.prompt.verbalizer.words == {"negative": ("negative",), "positive": ("positive",)}


def test_prompt_tuning_is_ptuning_without_an_encoder(tiny_causal, task):
    torch.manual_seed(1)
    preset = build_method("prompt-tuning", tiny_causal, task, {"prompt_length": 3})
    torch.manual_seed(1)
    spelled_out = build_method("ptuning", tiny_causal, task, {"encoder": "none", "prompt_length": 3})
    assert preset.soft_prompt.encoder is None and torch.equal(preset.soft_prompt(), spelled_out.soft_prompt())
    items = preset.featurize(task.test)
    assert torch.equal(preset.score_items(items), spelled_out.score_items(items))
    with pytest.raises(UserError, match="method 'prompt-tuning' has no option encoder"):
        build_method("prompt-tuning", tiny_causal, task, {"encoder": "lstm"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patterns": ["{text} It was {mask}."]}, "has no soft tokens"),
        ({"patterns": ["{text} It was {mask} [P]."]}, "soft tokens after {mask}"),
        ({"patterns": [TEMPLATE, TEMPLATE]}, "trains one template"),
        ({"encoder": "gru"}, "unknown --encoder 'gru'"),
        ({"readout": "cls"}, "unknown --readout 'cls'"),
        ({"readout": "head", "calibrate": True}, "does not apply to --readout head"),
        ({"aux_lm_weight": 1e-4}, "method 'ptuning' has no option aux_lm_weight"),  # PET's auxiliary loss
        ({"prompt_length": 0}, "--prompt-length must be a whole number in [1, 4096]"),
        ({"patterns": ["[P:\u2603] {text} It was {mask}."]}, "no token for '\u2603'"),
    ],
)
def test_refusals_are_one_line_user_errors(tiny_causal, task, options, message):
    backbone = tiny_causal if "\u2603" not in str(options) else _tiny("mlm", "bert-tiny")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("{", r"\{")):
        make(backbone, task, **options)


def test_soft_tokens_after_a_causal_mask_are_refused_with_the_reason_and_the_cure(tiny_causal, task):
    with pytest.raises(UserError) as refused:
        make(tiny_causal, task, patterns=["{text} It was {mask} [P]."])
    assert str(refused.value) == ("pattern '{text} It was {mask} [P].': a causal LM reads left to right, so soft tokens "
                                  "after {mask} cannot change its answer; put them before {mask}")


def test_cli_bad_template_is_one_line_and_leaves_no_run(tmp_path, task_folder, capsys):
    code = main(["train", "--task", str(task_folder), "--model", "bert-tiny", "--method", "ptuning", "--pattern",
                 "{text} It was {mask}.", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "has no soft tokens" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---------------------------------------------------------------- real models, end to end


@pytest.mark.slow
@pytest.mark.parametrize(("model", "encoder", "readout"), [("bert-tiny", "mlp", "head"), ("smollm2-135m", "lstm", "verbalizer")])
def test_train_save_load_predict_on_real_models_through_the_api(tmp_path, model, encoder, readout):
    task = sentiment_task(n_test=4)
    folder = tmp_path / "task"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        rows = [{"text": e.text, "label": e.label} for e in getattr(task, split)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.json").write_text(json.dumps({"task": "sst-2", "labels": task.labels}))
    training = TrainConfig(steps=2, batch_size=4, eval_batch_size=8)
    config = RunConfig(task=str(folder), model=model, method="ptuning", training=training,
                       method_options={"encoder": encoder, "readout": readout})
    zero_shot = evaluate_untrained(config, progress=False)
    assert zero_shot["test"]["accuracy"] == pytest.approx(accuracy_by_hand(config, "test"))
    result = train_run(config, out=tmp_path / "run", progress=False)
    weights = load_weights(tmp_path / "run" / "adapter.safetensors")
    assert weights["soft_prompt.embeddings"].shape[0] == 4  # the built-in template's soft tokens, materialised
    assert result.metrics["adapter_bytes"] < 100_000 < result.metrics["trainable_parameters"] * 4
    saved = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    predicted = load_run(tmp_path / "run").predict([Example(row["text"]) for row in saved])
    for row, fresh in zip(saved, predicted):
        assert fresh["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "options"), [
    ("smollm2-135m", ["--encoder", "none", "--prompt-length", "3"]),  # prompt tuning
    ("bert-tiny", ["--encoder", "lstm", "--pattern", "[P*2]{text} [P:great] It was {mask}."]),  # P-tuning, soft tokens inside
])
def test_cli_ptuning_train_predict_on_real_models(tmp_path, task_folder, capsys, model, options):
    out = tmp_path / "run"
    code = main(["train", "--task", str(task_folder), "--model", model, "--method", "ptuning", *options,
                 "--steps", "2", "--batch-size", "4", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--input", str(task_folder / "test.jsonl")]) == 0
    fresh = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in fresh] == [r["prediction"] for r in saved]
    for row, again in zip(saved, fresh):
        assert again["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)


@pytest.mark.slow
def test_two_processes_train_the_prompt_like_one(tmp_path, task_folder):
    """Data-parallel P-tuning under torchrun (2 CPU processes): the gradients of the prompt encoder
    are averaged like any other, so the steps and the saved prompt are those of one process."""
    import subprocess
    import sys

    options = ["--task", task_folder, "--model", "bert-tiny", "--method", "ptuning", "--encoder", "lstm", "--steps", "6",
               "--batch-size", "3", "--eval-every", "3", "--lr", "0.01", "--device", "cpu", "--quiet",
               "--dtype", "float32"]  # bfloat16 rounds differently on half batches: exactness needs float32
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.Popen([*launcher, "-m", "pretune", "train", *map(str, options), "--out", "two"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = subprocess.run([sys.executable, "-m", "pretune", "train", *map(str, options), "--out", "one"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    _, errors = two.communicate(timeout=300)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, errors
    single, double = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    for a, b in zip(single["train"]["history"], double["train"]["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    prompts = [load_weights(tmp_path / name / "adapter.safetensors")["soft_prompt.embeddings"] for name in ("one", "two")]
    assert torch.allclose(*prompts, atol=1e-5)
