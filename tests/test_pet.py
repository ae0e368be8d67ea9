import json
from dataclasses import replace

import pytest
import torch

from pretune.api import RunConfig, evaluate_untrained, load_run, train_run
from pretune.cloze.prompt import BUILT_IN, built_in_prompts
from pretune.data import Example, Task, data_root
from pretune.errors import UserError
from pretune.methods import build_method, build_methods, make_config, method_spec
from pretune.methods.cloze import BODY_RATES
from pretune.training.evaluation import evaluate
from pretune.training.recipes import auxiliary_loss, fit, tuned
from pretune.training.trainer import TrainConfig, Trainer, optimizer_groups
from pretune.tuning import BodyTraining
from scored import accuracy_by_hand

MULTI_TOKEN = "positive=great,phenomenally,good negative=bad,abysmally"  # two words span several tokens


def make(backbone, task, training="frozen", **options):
    """PET as a run builds it: one cloze method, or a pattern ensemble of them."""
    config = make_config("pet", options, task)
    return tuned(build_methods("pet", backbone, task, config, BodyTraining.parse(training)))


def only_batch(method, examples):
    return method.collate(method.featurize(examples))


def exact_label_distribution(method, batch):
    """Reference: every target a full log-softmax over the vocabulary, words combined by logsumexp."""
    exact = replace(batch, target_normalize=torch.ones_like(batch.target_normalize))
    words = method.readout.scorer.full_vocabulary_word_scores(exact)
    per_label = torch.stack([words[:, method.prompt.word_labels == c].logsumexp(-1) for c in range(method.task.num_labels)], dim=1)
    return per_label.softmax(-1)


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("pattern", ["{text} It was {mask}", "{text} It was {mask}, really."])
def test_causal_scores_match_the_full_vocabulary_and_exact_probabilities(tiny_causal, task, pattern):
    method = make(tiny_causal, task, patterns=[pattern], verbalizer=MULTI_TOKEN)
    assert max(len(ids) for ids in method.prompt.words.token_ids) > 1
    batch = only_batch(method, task.test[:4])
    with torch.no_grad():
        cheap = method.readout.scorer.word_scores(batch)
        reference = method.readout.scorer.full_vocabulary_word_scores(batch)
        assert torch.allclose(cheap, reference, atol=1e-4)
        # Skipped normalisers only shift every label of an example alike: the distribution is exact.
        assert torch.allclose(method(batch).softmax(-1), exact_label_distribution(method, batch), atol=1e-5)


def test_word_scores_match_a_softcapping_models_own_logits(task):
    """Gemma 2 caps its final logits (tanh(x / c) * c); the label-word rows must be capped alike. A tiny
    random Gemma 2 with a cap of 0.5, so the cap bites."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    from conftest import resolve
    from pretune.backbones import Backbone

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tokenizer.pad_token = tokenizer.eos_token
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                          final_logit_softcapping=0.5, attn_logit_softcapping=None, sliding_window=64)
    backbone = Backbone(model=Gemma2ForCausalLM(config).eval(), tokenizer=tokenizer, kind="causal", name="tiny-gemma2", path="")
    method = make(backbone, task, patterns=["{text} It was {mask}"], verbalizer=MULTI_TOKEN)
    batch = only_batch(method, task.test[:4])
    scorer = method.readout.scorer
    with torch.no_grad():
        capped = scorer.word_scores(batch)
        assert torch.allclose(capped, scorer.full_vocabulary_word_scores(batch), atol=1e-5)
        scorer.softcap = None  # the same rows uncapped are another distribution
        assert (scorer.word_scores(batch) - capped).abs().max() > 1e-3


# Two word lengths (3 tokens and 1) as well as the many of MULTI_TOKEN: the normalisers must be computed as
# soon as the lengths differ.
@pytest.mark.parametrize("verbalizer", [MULTI_TOKEN, "negative=abysmal positive=great"])
def test_masked_lm_fills_as_many_masks_as_a_word_has_tokens(tiny_mlm, task, verbalizer):
    method = make(tiny_mlm, task, patterns=["{text} It was {mask}."], verbalizer=verbalizer)
    lengths = {len(ids) for ids in method.prompt.words.token_ids}
    assert len(lengths) > 1
    batch = only_batch(method, task.test[:3])
    masks_per_row = (batch.input_ids == tiny_mlm.tokenizer.mask_token_id).sum(dim=1)
    assert sorted(masks_per_row.tolist()) == sorted(list(lengths) * 3)  # a row per word length, not per word
    scorer = method.readout.scorer
    with torch.no_grad():
        assert torch.allclose(scorer.word_scores(batch), scorer.full_vocabulary_word_scores(batch), atol=1e-4)
        assert torch.allclose(method(batch).softmax(-1), exact_label_distribution(method, batch), atol=1e-5)


def test_causal_single_token_words_share_one_row_per_example(tiny_causal, task):
    method = make(tiny_causal, task, patterns=["Review: {text}\nSentiment: {mask}"])
    batch = only_batch(method, task.test[:5])
    assert batch.input_ids.shape[0] == 5 and not batch.target_normalize.any()


def test_right_padding_does_not_change_scores(tiny_causal, tiny_mlm, task):
    short, long = Example("a delight"), Example("a long and winding story about nothing much at all, told slowly")
    for backbone in (tiny_causal, tiny_mlm):
        method = make(backbone, task, verbalizer=MULTI_TOKEN)
        alone = method.score_items(method.featurize([short]))
        together = method.score_items(method.featurize([short, long]))
        assert torch.allclose(alone[0], together[0], atol=1e-5)


def test_soft_token_positions_reach_the_batch_for_ptuning(tiny_mlm, tiny_causal, task):
    for backbone in (tiny_mlm, tiny_causal):
        options = {"patterns": ["[P*2] {text} [P] It was {mask}"], "verbalizer": MULTI_TOKEN}
        method = build_method("ptuning", backbone, task, options, BodyTraining.parse("frozen"))
        batch = only_batch(method, task.test[:2])
        assert batch.soft_mask.sum(dim=1).tolist() == [3] * batch.input_ids.shape[0]
        placeholder = method.prompt.renderer.placeholder_id
        assert (batch.input_ids[batch.soft_mask] == placeholder).all()


def test_soft_tokens_after_a_masked_lms_mask_move_with_the_number_of_masks(tiny_mlm, task):
    """A masked LM reads soft tokens after the mask too; in a row of a word of N tokens they sit N - 1
    places further on: every row marks exactly the three placeholders as soft."""
    options = {"patterns": ["[P] {text} It was {mask} [P*2] ."], "verbalizer": MULTI_TOKEN}
    method = build_method("ptuning", tiny_mlm, task, options, BodyTraining.parse("frozen"))
    batch = only_batch(method, task.test[:2])
    assert len({int(n) for n in (batch.input_ids == tiny_mlm.tokenizer.mask_token_id).sum(dim=1)}) > 1  # rows of several lengths
    assert batch.soft_mask.sum(dim=1).tolist() == [3] * batch.input_ids.shape[0]
    assert (batch.input_ids[batch.soft_mask] == method.prompt.renderer.placeholder_id).all()


# ---------------------------------------------------------------- refusals


def test_refusals_are_user_errors(tiny_encoder, tiny_causal, task):
    with pytest.raises(UserError, match="no language-model head"):
        method_spec("pet").check_backbone(tiny_encoder)
    with pytest.raises(UserError, match="soft tokens need --method ptuning"):
        make(tiny_causal, task, patterns=["[P*2] {text} It was {mask}"])
    with pytest.raises(UserError, match="uses {text_pair} but task 'sst-2' has single texts"):
        make(tiny_causal, task, patterns=["{text} ? {mask} , {text_pair}"])
    with pytest.raises(UserError, match="unknown label 'good'"):
        make(tiny_causal, task, verbalizer="good=great negative=bad")
    with pytest.raises(UserError, match="a causal LM needs text before"):
        make(tiny_causal, task, patterns=["{mask} {text}"])
    regression = Task("sts-b", None, "pearson", train=[Example("a", label=1.0)])
    with pytest.raises(UserError, match="classification task"):
        make(tiny_causal, regression, patterns=["{text} {mask}"])
    with pytest.raises(UserError, match="--distil needs an ensemble"):
        make_config("pet", {"patterns": ["{text} {mask}"], "distil": True})


def test_a_masked_lm_without_a_mask_token_is_refused_by_name(tiny_mlm):
    from pretune.cloze.lm import language_model

    tiny_mlm.tokenizer.mask_token = None
    with pytest.raises(UserError) as refused:
        language_model(tiny_mlm)
    assert str(refused.value) == "model 'tiny-mlm' is a masked LM without a mask token"


def test_a_masked_lm_whose_output_layer_is_in_no_head_module_is_refused_by_name():
    """The head's transform is the output layer's parent module: a model whose output layer is its
    own child has none to separate, and the refusal names the model's class and the layer."""
    from pretune.cloze.lm import MaskedLM

    class HeadlessLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.decoder

    with pytest.raises(UserError) as refused:
        MaskedLM.output_transform(HeadlessLM())
    assert str(refused.value) == (
        "cannot separate the head transform of HeadlessLM from its output layer ('decoder' is not inside a head module)"
    )


def test_an_empty_text_before_a_causal_mask_is_refused_with_the_cure(tiny_causal, task):
    """The pattern "{text} {mask}" passes the pattern check, but an empty text leaves nothing before the mask."""
    method = make(tiny_causal, task, patterns=["{text} {mask}"])
    (rendered,) = method.featurize([Example("")], progress=False)
    assert rendered.prefix == []  # no beginning-of-text token either: nothing to predict the answer from
    with pytest.raises(UserError) as refused:
        method.label_scores([Example("")])
    assert str(refused.value) == ("a causal LM needs text before {mask}, and an example left none there: "
                                  "add words before the mask")


def test_no_built_in_pattern_is_searched_for(tiny_causal):
    custom = Task("mine", ["a", "b"], train=[Example("x", label="a"), Example("y", label="b")])
    searched = make(tiny_causal, custom)  # issue 13: the prompt search chooses (tests/test_prompt_search.py)
    assert searched.prompt.pattern.ends_with_mask and searched.prompt.pattern.fields == ("text",)
    method = make(tiny_causal, custom, patterns=["{text} Answer: {mask}"])  # words default to the label names
    assert method.prompt.verbalizer.words == {"a": ("a",), "b": ("b",)}


# ---------------------------------------------------------------- calibration


def test_calibration_divides_by_the_content_free_distribution(tiny_causal, task):
    raw = make(tiny_causal, task, verbalizer=MULTI_TOKEN)
    calibrated = make(tiny_causal, task, verbalizer=MULTI_TOKEN, calibrate=True)
    content_free = raw.score_items(raw.featurize([Example(t, t) for t in ("N/A", "", "[MASK]")])).softmax(-1).mean(0)
    items = raw.featurize(task.test)
    expected = (raw.score_items(items).softmax(-1) / content_free)
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(calibrated.score_items(items).softmax(-1), expected, atol=1e-5)


def test_calibration_is_recomputed_after_the_weights_change(tiny_mlm, task):
    method = make(tiny_mlm, task, training="full", calibrate=True)
    items = method.featurize(task.train)
    method.eval().score_items(items)
    before = method._content_free.clone()
    Trainer(TrainConfig(steps=2, body_lr=1e-2), progress=False, log=None).fit(method, items, task.targets(task.train))
    method.eval().score_items(items)
    assert not torch.allclose(before, method._content_free)


# ---------------------------------------------------------------- training


def test_training_learns_the_toy_task(tiny_causal, task):
    method = make(tiny_causal, task, training="full", verbalizer=MULTI_TOKEN)
    items = method.featurize(task.train)
    Trainer(TrainConfig(steps=12, body_lr=1e-2, batch_size=8), progress=False, log=None).fit(method,
        items, task.targets(task.train)
    )
    metrics, _ = evaluate(method, task.train, task.targets(task.train))
    assert metrics["accuracy"] == 1.0


def test_lora_trains_adapters_only(tiny_mlm, task):
    method = make(tiny_mlm, task, training="lora")
    names = [name for name, p in method.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names)
    assert optimizer_groups(method, TrainConfig())[0]["lr"] == BODY_RATES["lora"]


def test_auxiliary_language_modelling_loss(tiny_mlm, tiny_causal, task):
    for backbone in (tiny_mlm, tiny_causal):
        method = make(backbone, task, training="full", aux_lm_weight=0.5)
        assert auxiliary_loss(method, [])() is None  # nothing to read
        auxiliary = auxiliary_loss(method, method.featurize(task.train))
        method.train()
        loss = auxiliary()
        assert loss.requires_grad and 0 < loss.item() < 0.5 * 20
        loss.backward()
        assert method.model.get_input_embeddings().weight.grad is not None


# ---------------------------------------------------------------- ensembles and distillation


PATTERNS = ["{text} It was {mask}.", "{text} All in all, it was {mask}."]


def test_an_ensemble_averages_its_members_distributions(tiny_mlm, task):
    method = make(tiny_mlm, task, patterns=PATTERNS)
    method.weights = torch.tensor([0.25, 0.75])
    members = [member.label_scores(task.test).softmax(-1) for member in method.members]
    expected = 0.25 * members[0] + 0.75 * members[1]
    assert torch.allclose(method.label_scores(task.test).softmax(-1), expected, atol=1e-5)


def test_ensemble_members_train_separately_and_reload_with_the_same_predictions(tiny_mlm, task):
    method = make(tiny_mlm, task, training="bitfit", patterns=PATTERNS, ensemble_weighting="dev")
    items, targets = method.featurize(task.train), task.targets(task.train)
    # eval_start off: a random tiny model's untrained members may tie training on dev and be kept as they started
    trainer = Trainer(TrainConfig(steps=3, body_lr=1e-2, eval_start=False), progress=False, log=None)
    result = fit(method, trainer, items, targets, items, targets)
    assert {row["phase"] for row in result.history} == {0, 1} and result.steps == 6
    first, second = method.states
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    state = method.trainable_state_dict()
    assert "ensemble.weights" in state and all(k.startswith(("members.", "ensemble.")) for k in state)
    expected = method.score_items(items)
    fresh = make(_same_tiny(tiny_mlm), task, training="bitfit", patterns=PATTERNS)
    fresh.load_trainable_state_dict(state)
    assert torch.allclose(fresh.score_items(items), expected, atol=1e-5)


def _same_tiny(backbone):
    """A second copy of a tiny model with its initial weights (the conftest builds it from seed 0)."""
    from conftest import _tiny

    return _tiny(backbone.kind, "bert-tiny")


def test_distillation_leaves_one_model_trained_on_soft_labels(tiny_mlm, task, tmp_path):
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": e.text}) + "\n" for e in task.train))
    method = make(tiny_mlm, task, training="bitfit", patterns=PATTERNS, distil=True, unlabelled=str(unlabelled))
    items, targets = method.featurize(task.train), task.targets(task.train)
    trainer = Trainer(TrainConfig(steps=2, body_lr=1e-2), progress=False, log=None)
    result = fit(method, trainer, items, targets, items, targets)
    assert {row["phase"] for row in result.history} == {0, 1, 2}
    assert method.distilled and not method.states
    state = method.trainable_state_dict()
    assert all(k.startswith("distilled.") for k in state)
    assert method.active == method.members[:1] and len(method.featurize(task.train[:2])) == 1  # the first pattern only


# ---------------------------------------------------------------- built-in prompts


def test_every_built_in_prompt_parses_and_fits_its_task():
    root = data_root()
    if root is None:
        pytest.skip("the benchmark data (../shared/data) is not on this machine: its task.json files hold the labels")
    for task_name, kinds in BUILT_IN.items():
        labels = json.loads((root / "fewshot" / task_name / "task.json").read_text())["labels"]
        for kind in kinds:
            for prompt in built_in_prompts(task_name, kind):
                prompt.verbalizer.for_labels(labels)
                if kind == "causal":
                    assert prompt.pattern.ends_with_mask, prompt.pattern


# ---------------------------------------------------------------- real models, end to end


@pytest.fixture
def small_task_folder(tmp_path):
    """A task folder with a handful of examples: real models stay quick on it."""
    folder = tmp_path / "small-task"
    folder.mkdir()
    splits = {
        "train": [("a warm and funny film", "positive"), ("a delight", "positive"), ("a dull film", "negative"), ("a bore", "negative")],
        "dev": [("i loved every minute", "positive"), ("i hated every minute", "negative")],
        "test": [("great acting and a lovely story", "positive"), ("bad acting and a silly plot", "negative")],
    }
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (folder / "task.json").write_text(json.dumps({"task": "sst-2", "labels": ["negative", "positive"]}))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert-tiny", "smollm2-135m"])
def test_zero_shot_and_training_on_real_models_through_the_api(tmp_path, small_task_folder, model):
    training = TrainConfig(steps=1, batch_size=4, eval_batch_size=8)
    options = {"verbalizer": "positive=great,phenomenally negative=bad"}  # a multi-token word
    config = RunConfig(task=str(small_task_folder), model=model, method="pet", method_options=options, training=training)
    zero_shot = evaluate_untrained(config, progress=False)
    assert set(zero_shot) == {"dev", "test"}
    assert zero_shot["test"]["accuracy"] == pytest.approx(accuracy_by_hand(config, "test"))
    config.train = "lora"
    result = train_run(config, out=tmp_path / "run", progress=False)
    assert result.metrics["train"]["steps"] == 1 and result.metrics["adapter_bytes"] < 2_000_000
    predictor = load_run(tmp_path / "run")
    examples = [Example("great acting and a lovely story"), Example("bad acting and a silly plot")]
    saved = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    for row, fresh in zip(saved, predictor.predict(examples)):
        assert fresh["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)


@pytest.mark.slow
def test_smollm2_zero_shot_reads_sentiment_from_the_built_in_pattern(smollm2, task):
    method = make(smollm2, task)
    assert str(method.prompt.pattern) == "Review: {text}\nSentiment: {mask}"
    metrics, _ = evaluate(method, task.train, task.targets(task.train))
    assert metrics["accuracy"] >= 0.75  # 8 plain sentences; zero-shot SST-2 on this pattern is ~78%


@pytest.mark.slow
def test_cli_zero_shot_ensemble_training_and_a_bad_pattern(tmp_path, small_task_folder, capsys):
    from pretune.cli import main

    task_folder = small_task_folder
    zero_shot = ["eval", "--task", task_folder, "--model", "smollm2-135m", "--method", "pet", "--quiet"]
    code = main([str(a) for a in [*zero_shot, "--verbalizer", MULTI_TOKEN, "--calibrate"]])
    assert code == 0
    calibrated = RunConfig(task=str(task_folder), model="smollm2-135m", method="pet",
                           method_options={"verbalizer": MULTI_TOKEN, "calibrate": True})
    assert json.loads(capsys.readouterr().out)["test"]["accuracy"] == pytest.approx(accuracy_by_hand(calibrated, "test"))
    out = tmp_path / "ensemble"
    train = ["train", "--task", task_folder, "--model", "bert-tiny", "--method", "pet", "--train", "bitfit", "--steps", "2",
             "--pattern", PATTERNS[0], "--pattern", PATTERNS[1], "--verbalizer", MULTI_TOKEN, "--out", out, "--quiet"]
    assert main([str(a) for a in train]) == 0
    from safetensors.torch import load_file

    assert "ensemble.weights" in load_file(out / "adapter.safetensors")
    capsys.readouterr()
    code = main([str(a) for a in ["predict", "--run", out, "--input", task_folder / "test.jsonl"]])
    assert code == 0 and len(capsys.readouterr().out.splitlines()) == 2
    code = main([str(a) for a in [*zero_shot, "--pattern", "{text} It was {mask} or {mask}."]])
    err = capsys.readouterr().err
    assert code == 2 and "has 2 {mask}s" in err and len(err.strip().splitlines()) == 1
