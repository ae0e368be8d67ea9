"""Learned label tokens (`--label-tokens learned`, cloze/label_rows.py, DART) checked by value: at the
start they score exactly as the model's own rows; trained, they score as a model whose output layer
alone (untied from the input) holds them, log Z over the vocabulary included; one step with a frozen
body moves them and nothing of the model; the adapter carries them through the CLI; each refusal is
its whole line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import sentiment_task
from pretune.api import RunConfig, load_run, train_run
from pretune.backbones import Backbone
from pretune.cloze.label_rows import OutputRows
from pretune.cloze.scoring import LabelWordScorer
from pretune.data import Example
from pretune.methods import build_method
from pretune.methods.autoprompt import searched
from pretune.methods.cloze import OWN_RATE, ClozeConfig
from pretune.runs import load_weights
from pretune.training.trainer import TrainConfig, Trainer, optimizer_groups
from pretune.tuning import BodyTraining
from refusals import assert_refused, assert_refused_whole, run_main

MLM_PATTERN, CAUSAL_PATTERN = "{text} It was {mask}.", "Review: {text}\nSentiment: {mask}"
SINGLE_TOKEN = "negative=bad positive=great"
# "abysmally", "phenomenally": several tokens in both tokenizers, so later tokens need log Z (and, for a
# masked LM, words of different lengths do too).
MULTI_TOKEN = "negative=bad,abysmally positive=great,phenomenally"
LEARNED_ROWS = {"verbalizer.label_rows.weight", "verbalizer.label_rows.bias"}


def make(backbone, task, label_tokens: str, verbalizer: str = SINGLE_TOKEN, method: str = "pet",
         training: str = "frozen", **options):
    pattern = MLM_PATTERN if backbone.kind == "mlm" else CAUSAL_PATTERN
    if method != "pet":
        pattern = "[P*2]" + pattern
    options = {"patterns": [pattern], "verbalizer": verbalizer, "label_tokens": label_tokens, **options}
    return build_method(method, backbone, task, options, BodyTraining.parse(training))


def word_scores(method, examples) -> torch.Tensor:
    batch = method.collate(method.featurize(examples))
    with torch.no_grad():
        return method.readout.scorer.word_scores(batch)


def moved(method) -> None:
    """Learned rows (and bias) moved at random, as training would move them."""
    rows = method.readout.label_rows
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rows.weight.add_(torch.randn(rows.weight.shape, generator=generator))
        if rows.bias is not None:
            rows.bias.add_(torch.randn(rows.bias.shape, generator=generator))


def with_output_rows(backbone: Backbone, tokens: torch.Tensor, weight: torch.Tensor, bias) -> Backbone:
    """A copy of the model whose output layer alone (untied from the input embeddings) holds these rows."""
    model = copy.deepcopy(backbone.model)
    output = model.get_output_embeddings()
    new_weight = output.weight.detach().clone()
    new_weight[tokens] = weight.detach()
    output.weight = nn.Parameter(new_weight)
    if bias is not None:
        new_bias = output.bias.detach().clone()
        new_bias[tokens] = bias.detach()
        output.bias = nn.Parameter(new_bias)
    assert output.weight is not model.get_input_embeddings().weight
    return Backbone(model=model, tokenizer=backbone.tokenizer, kind=backbone.kind, name=backbone.name, path="")


@pytest.fixture(params=["tiny_mlm", "tiny_causal"])
def tiny(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- scores


def test_default_is_fixed_and_adds_no_parameters(tiny, task):
    default = build_method("pet", tiny, task, {"patterns": [MLM_PATTERN if tiny.kind == "mlm" else CAUSAL_PATTERN]},
                           BodyTraining.parse("frozen"))
    assert default.config.label_tokens == "fixed"
    assert not any(p.requires_grad for p in default.parameters())


@pytest.mark.parametrize("verbalizer", [SINGLE_TOKEN, MULTI_TOKEN])
def test_learned_rows_start_with_the_fixed_scores(tiny, task, verbalizer):
    fixed, learned = make(tiny, task, "fixed", verbalizer), make(tiny, task, "learned", verbalizer)
    lengths = {len(ids) for ids in learned.prompt.words.token_ids}
    assert (lengths != {1}) == (verbalizer == MULTI_TOKEN)
    tokens = sorted({t for ids in learned.prompt.words.token_ids for t in ids})
    rows = learned.readout.label_rows
    assert rows.tokens.tolist() == tokens and rows.weight.shape == (len(tokens), 32)
    assert (rows.bias is not None) == (tiny.kind == "mlm")  # BERT's output layer has a bias, Llama's none
    a, b = word_scores(fixed, task.test), word_scores(learned, task.test)
    if verbalizer == SINGLE_TOKEN:
        assert torch.equal(a, b)  # the same rows read the same way: bit for bit
    else:
        # log Z sums the learned tokens' logits from their own product: equal up to float rounding
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
        assert torch.equal(fixed.label_scores(task.test).argmax(-1), learned.label_scores(task.test).argmax(-1))


@pytest.mark.parametrize("verbalizer", [SINGLE_TOKEN, MULTI_TOKEN])
def test_moved_rows_score_as_an_untied_output_layer_holding_them(tiny, task, verbalizer):
    """The scores are log-probabilities (log Z included where needed) of a model whose output rows of
    the label tokens are the learned ones, its input embeddings unchanged."""
    learned = make(tiny, task, "learned", verbalizer)
    before = word_scores(learned, task.test)
    moved(learned)
    rows = learned.readout.label_rows
    reference = LabelWordScorer(with_output_rows(tiny, rows.tokens, rows.weight, rows.bias))
    batch = learned.collate(learned.featurize(task.test))
    with torch.no_grad():
        after = learned.readout.scorer.word_scores(batch)
        expected = reference.full_vocabulary_word_scores(batch)
    assert (after - before).abs().max() > 0.1  # the rows are read: the check can fail
    assert torch.allclose(after, expected, atol=1e-4), (after - expected).abs().max()


def test_a_token_after_the_mask_reads_its_learned_row_too(tiny_causal, task):
    """A label token that is also a token of the text after the mask is one token of one distribution."""
    pattern = "It was {mask} great fun. {text}"
    learned = make(tiny_causal, task, "learned", patterns=[pattern])
    great = tiny_causal.tokenizer(" great", add_special_tokens=False)["input_ids"]
    batch = learned.collate(learned.featurize(task.test[:1]))
    assert great[0] in batch.target_token[2:].tolist()  # " great" is scored after the mask as well
    moved(learned)
    rows = learned.readout.label_rows
    reference = LabelWordScorer(with_output_rows(tiny_causal, rows.tokens, rows.weight, None))
    with torch.no_grad():
        got = learned.readout.scorer.word_scores(batch)
        expected = reference.full_vocabulary_word_scores(batch)
    assert torch.allclose(got, expected, atol=1e-4)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("method", ["pet", "ptuning"])
def test_one_frozen_step_moves_the_label_rows_and_nothing_of_the_model(tiny, task, method):
    learned = make(tiny, task, "learned", MULTI_TOKEN, method=method)
    model_before = {name: p.detach().clone() for name, p in learned.model.named_parameters()}
    own_before = {name: p.detach().clone() for name, p in learned.named_parameters() if p.requires_grad}
    input_before = learned.model.get_input_embeddings().weight.detach().clone()
    items, targets = learned.featurize(task.train), torch.tensor(task.targets(task.train))

    def loss() -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(learned.eval()(learned.collate(items)), targets))

    start = loss()
    config = TrainConfig(steps=1, batch_size=len(items), lr=1e-3, warmup_ratio=0.0, eval_start=False)
    Trainer(config, progress=False, log=None).fit(learned, items, task.targets(task.train))
    assert loss() < start
    own = {name: p for name, p in learned.named_parameters() if p.requires_grad}
    changed = {name for name, p in own.items() if not torch.equal(p, own_before[name])}
    rows = LEARNED_ROWS if tiny.kind == "mlm" else LEARNED_ROWS - {"verbalizer.label_rows.bias"}
    assert rows <= changed and changed - rows <= {n for n in own if n.startswith("soft_prompt.")}
    assert (changed > rows) == (method == "ptuning")  # ptuning's prompt trains beside them
    for name, p in learned.model.named_parameters():
        assert torch.equal(p, model_before[name]), name
    assert torch.equal(learned.model.get_input_embeddings().weight, input_before)


def test_learned_rows_train_at_the_methods_own_rate(tiny_mlm, task):
    training = BodyTraining.parse("full")
    assert ClozeConfig(label_tokens="learned").default_rates(training).own == OWN_RATE
    assert ClozeConfig().default_rates(training).own is None  # fixed pet adds no parameters of its own
    learned = make(tiny_mlm, task, "learned", training="full")
    groups = {g["name"]: g for g in optimizer_groups(learned, TrainConfig())}
    rows = learned.readout.label_rows
    assert [id(p) for p in groups["head"]["params"]] == [id(rows.weight), id(rows.bias)]
    assert groups["head"]["lr"] == OWN_RATE


def test_pattern_auto_searches_one_pattern_for_learned_rows(tiny_causal, monkeypatch):
    """The search may mix an ensemble for pet; with learned rows it is asked for one pattern."""
    asked = []

    class Asked(Exception):
        """What the search would choose does not matter here: only what it was asked."""

    def search(backbone, task, **options):
        asked.append(options["ensemble"])
        raise Asked

    monkeypatch.setattr("pretune.methods.autoprompt.search_prompt", search)
    for label_tokens in ("fixed", "learned"):
        with pytest.raises(Asked):
            searched(ClozeConfig(patterns=["auto"], label_tokens=label_tokens), sentiment_task(), tiny_causal)
    assert asked == [True, False]


# ---------------------------------------------------------------- the command line


def test_learned_rows_train_save_and_reload_through_the_cli(causal_folder, tiny_causal, task_folder, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--task", task_folder, "--model", causal_folder, "--method", "pet", "--train", "frozen",
            "--pattern", CAUSAL_PATTERN, "--verbalizer", MULTI_TOKEN, "--label-tokens", "learned", "--lr", "0.05",
            "--steps", "2", "--eval-start", "no", "--dtype", "float32", "--quiet", "--out", out]
    assert run_main(argv) == 0
    assert "label_tokens: learned" in (out / "config.yaml").read_text()
    weights = load_weights(out / "adapter.safetensors")
    assert set(weights) == {"verbalizer.label_rows.weight"}  # a frozen body saves only the rows
    tokens = sorted({t for w in ("bad", "abysmally", "great", "phenomenally")
                     for t in tiny_causal.tokenizer(" " + w, add_special_tokens=False)["input_ids"]})
    start = tiny_causal.model.get_output_embeddings().weight[tokens]
    assert not torch.allclose(weights["verbalizer.label_rows.weight"], start)  # trained, and saved as trained
    assert run_main(["predict", "--run", out, "--input", task_folder / "test.jsonl", "--output", tmp_path / "p.jsonl"]) == 0
    fresh = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for a, b in zip(fresh, saved, strict=True):  # reloaded with the learned rows: the same probabilities
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    test = sentiment_task().test
    untrained = make(tiny_causal, sentiment_task(), "fixed", MULTI_TOKEN).label_scores(test).softmax(-1)
    reloaded = torch.tensor([[row["probabilities"][label] for label in ("negative", "positive")] for row in fresh])
    assert (untrained - reloaded).abs().max() > 1e-3  # predicted with the trained rows, not the model's


REFUSALS = {
    "readout head": (
        ["--method", "ptuning", "--readout", "head"],
        "--label-tokens learned trains the rows the verbalizer's words are scored with; --readout head reads no "
        "label words",
    ),
    "channel scoring": (
        ["--method", "pet", "--scoring", "channel", "--pattern", "It was {mask}. {text}"],
        "--label-tokens learned trains the rows the label words are scored with; --scoring channel never scores "
        "the label words (they are its input): leave --label-tokens fixed",
    ),
    "pattern ensemble": (
        ["--method", "pet", "--pattern", MLM_PATTERN, "--pattern", "{mask}: {text}"],
        "--label-tokens learned trains one prompt's label words: give --pattern once (pattern ensembles keep "
        "--label-tokens fixed)",
    ),
    "head method": (
        ["--method", "head"],
        "method 'head' has no option label_tokens (its options: cache, dropout, encode_batch_size, head, hidden, "
        "max_length, pooling)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_learned_label_token_refusals_are_one_whole_line(case, causal_folder, task_folder, tmp_path, capsys):
    given, message = REFUSALS[case]
    out = tmp_path / "run"
    code = run_main(["train", "--task", task_folder, "--model", causal_folder, "--label-tokens", "learned",
                     "--steps", "1", "--quiet", *given, "--out", out])
    err = capsys.readouterr().err
    assert_refused_whole(code, err, message, out)


def test_an_unknown_label_tokens_value_is_refused_in_one_line(task_folder, tmp_path, capsys):
    code = run_main(["train", "--task", task_folder, "--method", "pet", "--label-tokens", "trained",
                     "--out", tmp_path / "run"])
    err = capsys.readouterr().err
    assert_refused(code, err, "unknown --label-tokens 'trained' (choose one of fixed, learned)", tmp_path / "run")


# ---------------------------------------------------------------- a real model


@pytest.mark.slow
def test_learned_label_tokens_train_end_to_end_on_smollm2(tmp_path, task_folder):
    training = TrainConfig(steps=2, batch_size=4, eval_batch_size=8, eval_start=False)
    config = RunConfig(task=str(task_folder), model="smollm2-135m", method="pet", train="frozen", dtype="float32",
                       training=training, method_options={"label_tokens": "learned"})
    result = train_run(config, out=tmp_path / "run", progress=False)
    model = result.method.model
    rows = result.method.readout.label_rows
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied, untouched
    assert not torch.equal(rows.weight, model.get_output_embeddings().weight[rows.tokens])
    weights = load_weights(tmp_path / "run" / "adapter.safetensors")
    assert set(weights) == {"verbalizer.label_rows.weight"} and weights["verbalizer.label_rows.weight"].shape[1] == 576
    saved = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    for row, fresh in zip(saved, load_run(tmp_path / "run").predict([Example(r["text"]) for r in saved]), strict=True):
        assert fresh["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)


def test_the_models_own_rows_give_the_layers_logits_bias_included_in_the_hidden_states_format():
    torch.manual_seed(0)
    layer, hidden = nn.Linear(4, 6), torch.randn(3, 4)
    rows = OutputRows(layer)
    assert torch.allclose(rows.logits(hidden), layer(hidden))
    layer.to(torch.bfloat16)  # a frozen layer as `precision.hold_frozen` holds it
    logits = rows.logits(hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, hidden @ layer.weight.float().T + layer.bias.float())
