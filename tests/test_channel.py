"""Noisy-channel scoring (`--scoring channel`, cloze/channel.py) checked by value: each label word's
score is the log-probability of the text after it, computed here by hand from the model's
full-vocabulary log-softmax; training with it moves the loss; the CLI trains, saves, reloads and
evaluates with it; and each refusal is its whole line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import POSITIVE, sentiment_task
from pretune.api import RunConfig, build_method, evaluate_untrained, prepare_task
from pretune.cloze.channel import ChannelLM
from pretune.data import Example, data_root
from pretune.methods import build_methods, make_config
from pretune.training.recipes import tuned
from pretune.training.trainer import TrainConfig, Trainer
from pretune.tuning import BodyTraining
from refusals import assert_refused_whole, run_main

PATTERN = "It was {mask}. {text}"
SINGLE_TOKEN = "negative=bad positive=great"
MULTI_TOKEN = "negative=bad,abysmally positive=great,phenomenally"  # "abysmally", "phenomenally": several tokens


def make(backbone, task, training="frozen", method="pet", **options):
    config = make_config(method, {"patterns": [PATTERN], "verbalizer": SINGLE_TOKEN, "scoring": "channel", **options}, task)
    return tuned(build_methods(method, backbone, task, config, BodyTraining.parse(training)))


def pieces(tokenizer, text: str, word: str) -> tuple[list[int], list[int], list[int]]:
    """PATTERN's prefix, word and suffix tokens, each piece tokenized on its own as the renderer does."""
    def encode(piece: str) -> list[int]:
        return tokenizer(piece, add_special_tokens=False)["input_ids"]

    return encode("It was"), encode(" " + word), encode(".") + encode(" " + text)


def log_probability_by_hand(backbone, text: str, word: str, part: str) -> float:
    """The sum of log p(token | every token before it), from the model's full-vocabulary log-softmax,
    over the label word's tokens (`part="word"`) or over every token after the word (`part="text"`)."""
    prefix, ids, suffix = pieces(backbone.tokenizer, text, word)
    sequence = prefix + ids + suffix
    with torch.no_grad():
        log_probs = backbone.model(input_ids=torch.tensor([sequence])).logits[0].float().log_softmax(-1)
    start, end = len(prefix) + len(ids), len(sequence)
    if part == "word":
        start, end = len(prefix), start
    return float(sum(log_probs[p - 1, sequence[p]] for p in range(start, end)))


def channel_by_hand(backbone, texts: list[str], words: list[str]) -> torch.Tensor:
    """[B, W]: each word's channel score, the log-probability of the text after it."""
    return torch.tensor([[log_probability_by_hand(backbone, t, w, "text") for w in words] for t in texts])


def words_of(verbalizer: str) -> list[str]:
    return [w for entry in verbalizer.split() for w in entry.split("=")[1].split(",")]


def by_label(word_scores: torch.Tensor) -> torch.Tensor:
    """[B, 2] from [B, W]: the negative label's words, then as many of the positive's, combined by logsumexp."""
    half = word_scores.shape[1] // 2
    return torch.stack([word_scores[:, :half].logsumexp(-1), word_scores[:, half:].logsumexp(-1)], dim=1)


# ---------------------------------------------------------------- scores by hand


@pytest.mark.parametrize("verbalizer", [SINGLE_TOKEN, MULTI_TOKEN])
def test_channel_word_scores_are_the_text_after_the_word_by_hand(tiny_causal, task, verbalizer):
    method = make(tiny_causal, task, verbalizer=verbalizer)
    words = words_of(verbalizer)
    lengths = [len(ids) for ids in method.prompt.words.token_ids]
    assert (max(lengths) > 1) == (verbalizer == MULTI_TOKEN)
    texts = [e.text for e in task.test[:3]]
    rendered = method.featurize(task.test[:3])
    for r, text in zip(rendered, texts):  # the hand computation reads the same tokens as the method
        prefix, _, suffix = pieces(tiny_causal.tokenizer, text, words[0])
        assert (r.prefix, r.suffix) == (prefix, suffix)
    expected = channel_by_hand(tiny_causal, texts, words)
    batch = method.collate(rendered)
    with torch.no_grad():
        assert torch.allclose(method.readout.scorer.word_scores(batch), expected, atol=1e-4)
        assert torch.allclose(method.eval()(batch), by_label(expected), atol=1e-4)


def test_direct_scoring_of_the_same_pattern_adds_the_words_own_log_probability(tiny_causal, task):
    """Direct = log p(word | prefix) + channel: the label prior through the word is all channel leaves out.
    (Direct skips the first word token's normaliser, the same for every word: compared up to that constant.)"""
    channel = make(tiny_causal, task, verbalizer=MULTI_TOKEN)
    direct = make(tiny_causal, task, verbalizer=MULTI_TOKEN, scoring="direct")
    assert not isinstance(direct.lm, ChannelLM)
    text, words = task.test[0].text, words_of(MULTI_TOKEN)
    with torch.no_grad():
        gap = (direct.readout.scorer.word_scores(direct.collate(direct.featurize(task.test[:1])))
               - channel.readout.scorer.word_scores(channel.collate(channel.featurize(task.test[:1]))))[0]
    own = torch.tensor([log_probability_by_hand(tiny_causal, text, w, "word") for w in words])
    assert (own - own[0]).abs().max() > 0.1  # the words' probabilities differ: the check can fail
    assert torch.allclose(gap - gap[0], own - own[0], atol=1e-4)


def test_an_empty_text_scores_every_label_zero(tiny_causal, task):
    """With nothing after the mask there is nothing to score given the label: log p(nothing) = 0, alone
    in a batch (no target at all) or beside a text."""
    method = make(tiny_causal, task, patterns=["It was {mask} {text}"])
    assert torch.equal(method.label_scores([Example("")]), torch.zeros(1, 2))
    empty = method.collate(method.featurize([Example("")]))  # no target at all: still index and mask tensors
    assert empty.target_row.dtype == empty.target_position.dtype == empty.target_token.dtype == torch.long
    assert empty.target_slot.dtype == torch.long and empty.target_normalize.dtype == torch.bool
    beside = method.label_scores([Example(""), Example(POSITIVE[0])])
    assert torch.equal(beside[0], torch.zeros(2)) and (beside[1] < -1).all()


@pytest.mark.parametrize("preset", ["ptuning", "prompt-tuning", "deep-prompt"])
def test_the_trained_prompt_presets_score_the_same_targets(tiny_causal, task, preset):
    """Soft tokens and prefixes change the hidden states, not which tokens are scored: the suffix's alone."""
    options = {"prompt_length": 2} if preset != "deep-prompt" else {}
    method = make(tiny_causal, task, method=preset, **options)
    assert isinstance(method.lm, ChannelLM)
    rendered = method.featurize(task.test[:2])
    batch = method.collate(rendered)
    word = len(method.prompt.words.token_ids[0])  # both words are one token
    expected = [t for r in rendered for _ in range(2) for t in r.suffix]
    assert batch.target_token.tolist() == expected and bool(batch.target_normalize.all())
    assert batch.target_position.min().item() == min(len(r.prefix) for r in rendered) + word - 1


# ---------------------------------------------------------------- training


def test_one_training_step_with_channel_lowers_the_loss(tiny_causal, task):
    method = make(tiny_causal, task, training="full")
    items, targets = method.featurize(task.train), torch.tensor(task.targets(task.train))

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(method.eval()(method.collate(items)), targets))

    before = loss()
    config = TrainConfig(steps=1, batch_size=len(items), body_lr=1e-3, warmup_ratio=0.0, eval_start=False)
    Trainer(config, progress=False, log=None).fit(method, items, task.targets(task.train))
    after = loss()
    assert after < before - 1e-3, (before, after)


# ---------------------------------------------------------------- the command line


def channel_options(model) -> list[str]:
    return ["--model", model, "--method", "pet", "--scoring", "channel", "--pattern", PATTERN, "--verbalizer",
            MULTI_TOKEN, "--dtype", "float32", "--quiet"]


def test_zero_shot_channel_through_the_cli_is_the_hand_computation(causal_folder, tiny_causal, task_folder, capsys):
    assert run_main(["eval", "--task", task_folder, *channel_options(causal_folder)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    test = sentiment_task().test
    words = words_of(MULTI_TOKEN)
    labels = by_label(channel_by_hand(tiny_causal, [e.text for e in test], words))
    truth = torch.tensor([["negative", "positive"].index(e.label) for e in test])
    assert metrics["test"]["accuracy"] == pytest.approx(float((labels.argmax(-1) == truth).float().mean()))


def test_channel_trains_saves_and_reloads_through_the_cli(causal_folder, task_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", task_folder, *channel_options(causal_folder), "--train", "full", "--steps", "2",
            "--out", out]
    assert run_main(argv) == 0
    assert "scoring: channel" in (out / "config.yaml").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert run_main(["predict", "--run", out, "--input", task_folder / "test.jsonl", "--output", tmp_path / "p.jsonl"]) == 0
    fresh = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for a, b in zip(fresh, saved, strict=True):  # reloaded with channel scoring: the same probabilities
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


REFUSALS = {
    "pattern with no text after the mask": (
        ["--pattern", "{text} It was {mask}."],
        "pattern '{text} It was {mask}.' has no text after {mask}: --scoring channel scores the text given the "
        "label word, so put {mask} before the text, e.g. 'It was {mask}. {text}'",
    ),
    "no pattern": (
        [],
        "--scoring channel needs a --pattern of your own with the text after {mask}, e.g. 'It was {mask}. {text}' "
        "(the built-in and searched patterns end with the mask)",
    ),
    "pattern auto": (
        ["--pattern", "auto"],
        "--scoring channel needs a --pattern of your own with the text after {mask}, e.g. 'It was {mask}. {text}' "
        "(the built-in and searched patterns end with the mask)",
    ),
    "verbalizer auto": (
        ["--pattern", PATTERN, "--verbalizer", "auto"],
        "--verbalizer auto chooses words by direct scoring; with --scoring channel give the words with --verbalizer",
    ),
    "readout head": (
        ["--method", "ptuning", "--pattern", "[P*2]" + PATTERN, "--readout", "head"],
        "--scoring channel scores the text after the verbalizer's words; it does not apply to --readout head",
    ),
    "head method": (
        ["--method", "head"],
        "method 'head' has no option scoring (its options: cache, dropout, encode_batch_size, head, hidden, max_length, "
        "pooling)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_channel_refusals_are_one_whole_line(case, causal_folder, task_folder, tmp_path, capsys):
    given, message = REFUSALS[case]
    out = tmp_path / "run"
    argv = ["train", "--task", task_folder, "--model", causal_folder, "--method", "pet", "--scoring", "channel",
            "--steps", "1", "--quiet", *given, "--out", out]
    code = run_main(argv)
    err = capsys.readouterr().err
    assert_refused_whole(code, err, message, out)


def test_channel_on_a_masked_lm_is_refused_in_one_whole_line(tmp_path, tiny_mlm, task_folder, capsys):
    folder = tmp_path / "tiny-mlm"
    tiny_mlm.model.save_pretrained(folder)
    tiny_mlm.tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    code = run_main(["train", "--task", task_folder, "--model", folder, "--method", "pet", "--scoring", "channel",
                     "--pattern", "It was {mask}. {text}", "--steps", "1", "--quiet", "--out", out])
    message = f"--scoring channel needs a causal LM; model '{folder}' is a masked LM (leave --scoring direct)"
    err = capsys.readouterr().err
    assert_refused_whole(code, err, message, out)


# ---------------------------------------------------------------- a real model


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="the benchmark data (../shared/data) is not on this machine: "
                    "the test reads SST-2 from it")
def test_zero_shot_channel_on_smollm2_is_the_hand_computation(smollm2):
    config = RunConfig(task="sst-2", model="smollm2-135m", method="pet", test_sample=6, dtype="float32",
                       method_options={"patterns": [PATTERN], "verbalizer": MULTI_TOKEN, "scoring": "channel"})
    task = prepare_task(config)
    backbone = smollm2  # float32
    backbone.model.eval()
    method = build_method(config, task, backbone=backbone)
    method.finalize()
    examples = task.test
    expected = by_label(channel_by_hand(backbone, [e.text for e in examples], words_of(MULTI_TOKEN)))
    assert torch.allclose(method.label_scores(examples).float(), expected, atol=2e-3)
    metrics = evaluate_untrained(config, progress=False, backbone=backbone)
    truth = torch.tensor(task.targets(examples))
    assert metrics["test"]["accuracy"] == pytest.approx(float((expected.argmax(-1) == truth).float().mean()))
