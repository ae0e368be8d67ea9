"""The automatic prompt (issue 13): candidates, the search, and `auto` / no built-in prompt end to end."""

import json

import pytest
import torch

from conftest import NEGATIVE, POSITIVE
from pretune.cli import main
from pretune.cloze import search
from pretune.cloze.candidates import find_label_words, holds_text, pattern_candidates, whole_words
from pretune.cloze.pattern import Pattern
from pretune.cloze.search import search_prompt
from pretune.data import Example, Task
from pretune.runs import RunFolder


def reviews_task(name: str = "my-reviews") -> Task:
    """A sentiment task under a name with no built-in prompt."""
    train = [Example(t, label="good") for t in POSITIVE] + [Example(t, label="bad") for t in NEGATIVE]
    return Task(name, ["bad", "good"], "accuracy", train=train, dev=train[:], test=train[:4])


def pair_task() -> Task:
    rows = [("a man sleeps", "a person rests", "yes"), ("a dog runs", "a cat flies", "no"),
            ("it rains", "the street is wet", "yes"), ("she sings", "nobody makes a sound", "no")]
    examples = [Example(a, b, label) for a, b, label in rows]
    return Task("my-pairs", ["no", "yes"], "accuracy", train=examples, dev=examples[:], test=examples[:2])


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def reviews_folder(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    task = reviews_task()
    for split in ("train", "dev", "test"):
        rows = [{"text": e.text, "label": e.label} for e in getattr(task, split)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.json").write_text(json.dumps({"task": task.name, "labels": task.labels, "metric": "accuracy"}))
    return folder


# ---------------------------------------------------------------- candidates


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_every_candidate_pattern_holds_the_text(kind):
    for task in (reviews_task(), pair_task()):
        candidates = pattern_candidates(task, kind)
        assert len(candidates) >= 3
        for source, _ in candidates:
            pattern = Pattern.parse(source)
            assert set(pattern.fields) == ({"text", "text_pair"} if task.has_pairs else {"text"})
            if kind == "causal":
                assert pattern.ends_with_mask, source


def test_patterns_that_cannot_hold_the_text_are_refused():
    single, pairs = reviews_task(), pair_task()
    assert not holds_text(Pattern.parse("{text} ? {mask} , {text_pair}"), single, "mlm")  # no second text
    assert not holds_text(Pattern.parse("{text} It was {mask}."), pairs, "mlm")  # drops the second text
    assert not holds_text(Pattern.parse("{text} It was {mask}."), single, "causal")  # text after the mask
    assert not holds_text(Pattern.parse("[P*2]{text} It was {mask}"), single, "causal")  # soft tokens
    assert holds_text(Pattern.parse("{text} It was {mask}"), single, "causal")


def test_label_name_questions_list_the_labels_and_skip_names_that_are_not_words():
    sources = [s for s, _ in pattern_candidates(reviews_task(), "causal")]
    assert any("bad or good" in s for s in sources)
    numbered = Task("numbered", ["0", "1"], "accuracy", train=reviews_task().train)
    assert not any("0 or 1" in s for s, _ in pattern_candidates(numbered, "causal"))


@pytest.mark.parametrize("lead", [" ", ""])
def test_whole_words_are_single_word_start_tokens(bert_tiny, lead):
    tokenizer = bert_tiny.tokenizer
    ids, texts = whole_words(tokenizer, lead)
    assert len(ids) > 1000
    for token, text in list(zip(ids.tolist(), texts))[::97]:
        assert text.isalpha() and len(text) >= 2
        assert tokenizer(lead + text, add_special_tokens=False)["input_ids"] == [token]
    assert not any(t.startswith("##") for t in texts)  # no WordPiece continuation


def test_whole_words_of_a_bpe_vocabulary_start_a_word(tiny_causal):
    tokenizer = tiny_causal.tokenizer
    ids, texts = whole_words(tokenizer, " ")
    assert len(ids) > 1000
    for token, text in list(zip(ids.tolist(), texts))[::53]:
        assert text.isalpha()
        assert tokenizer(" " + text, add_special_tokens=False)["input_ids"] == [token]


def test_found_words_are_those_that_rise_for_their_label():
    import torch

    texts = ("alpha", "beta", "gamma", "delta")
    # Examples 0-1 are label 0 and favour "beta"; examples 2-3 are label 1 and favour "delta".
    log_probs = torch.log(torch.tensor([[0.2, 0.5, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1],
                                        [0.2, 0.1, 0.2, 0.5], [0.2, 0.1, 0.2, 0.5]]))
    words = find_label_words(log_probs, torch.tensor([0, 0, 1, 1]), 2, texts, per_label=1)
    assert words == [["beta"], ["delta"]]


# ---------------------------------------------------------------- the search


def test_search_on_a_tiny_model_is_deterministic_and_records_every_candidate(bert_tiny):
    task = reviews_task()
    first = search_prompt(bert_tiny, task, progress=False)
    second = search_prompt(bert_tiny, task, progress=False)
    assert first.to_dict()["candidates"] == second.to_dict()["candidates"]
    assert first.patterns == second.patterns and first.verbalizer == second.verbalizer
    losses = [c.log_loss for c in first.candidates if c.origin != "ensemble"]
    assert min(losses) == losses[0] and len(losses) >= 10
    assert first.examples == len(task.train) + len(task.dev)
    assert {c.calibrate for c in first.candidates} == {False, True}  # calibration is chosen, not assumed
    assert any("found by the model" in c.origin for c in first.candidates)
    for pattern in first.patterns:
        assert holds_text(Pattern.parse(pattern), task, "mlm")
    assert "log-loss" in first.reason


def test_search_for_a_causal_pair_task_picks_a_pattern_that_holds_both_texts(tiny_causal):
    task = pair_task()
    result = search_prompt(tiny_causal, task, progress=False)
    for candidate in result.candidates:
        pattern = Pattern.parse(candidate.pattern)
        assert pattern.ends_with_mask and set(pattern.fields) == {"text", "text_pair"}


def test_given_words_and_calibration_are_kept(bert_tiny):
    result = search_prompt(bert_tiny, reviews_task(), words="good=great bad=terrible", calibrate=True, progress=False)
    assert result.verbalizer == "bad=terrible good=great" and result.calibrate  # in the task's label order
    assert {c.words for c in result.candidates} == {"bad=terrible good=great"}


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["pet", "ptuning"])
def test_train_on_a_task_without_a_built_in_prompt_chooses_one_and_says_so(method, reviews_folder, tmp_path, capsys):
    out = tmp_path / method
    code, stdout, err = run_cli(capsys, "train", "--task", reviews_folder, "--model", "bert-tiny", "--method", method,
                                "--steps", "2", "--quiet", "--out", out)
    assert code == 0, err
    assert "prompt search chose" in stdout
    search = json.loads((out / "prompt_search.json").read_text())
    assert search["patterns"] and search["candidates"] and "log-loss" in search["reason"]
    options = RunFolder(out).read_config()["method_options"]  # concrete: what load_run rebuilds
    assert options["verbalizer"] == search["verbalizer"] and options["calibrate"] == search["calibrate"]
    assert all(p.endswith(chosen) for p, chosen in zip(options["patterns"], search["patterns"]))
    code, _, err = run_cli(capsys, "predict", "--run", out, "--input", reviews_folder / "test.jsonl")
    assert code == 0, err  # a saved run predicts with what was chosen, without searching again


def test_eval_with_pattern_auto_reports_the_choice(reviews_folder, capsys):
    code, stdout, err = run_cli(capsys, "eval", "--task", reviews_folder, "--model", "bert-tiny", "--method", "pet",
                                "--pattern", "auto", "--verbalizer", "auto", "--quiet")
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["prompt"]["patterns"] and "log-loss" in metrics["prompt"]["why"]


@pytest.mark.parametrize("dtype, body_format", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_search_reads_the_body_in_the_runs_format(dtype, body_format, reviews_folder, monkeypatch, capsys):
    formats = []
    log_probs = search._log_probs

    def recording(scorer, hidden, batch):
        # the body has just run in this context (its output may be float32: norms compute in float32)
        formats.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return log_probs(scorer, hidden, batch)

    monkeypatch.setattr(search, "_log_probs", recording)
    code, _, err = run_cli(capsys, "eval", "--task", reviews_folder, "--model", "bert-tiny", "--method", "pet",
                           "--pattern", "auto", "--dtype", dtype, "--quiet")
    assert code == 0, err
    assert formats and set(formats) == {body_format}


def test_a_search_in_bfloat16_reads_words_and_vocabulary_in_float32(tiny_causal, monkeypatch):
    gaps, log_probs = [], search._log_probs

    def compared(scorer, hidden, batch):
        scores = log_probs(scorer, hidden, batch)
        with torch.autocast("cpu", enabled=False):
            in_float32 = log_probs(scorer, hidden.float(), batch)
        gaps.extend(float((a - b).abs().max()) for a, b in zip(scores, in_float32))
        return scores

    monkeypatch.setattr(search, "_log_probs", compared)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        search_prompt(tiny_causal, reviews_task(), words="good=great,wonderful bad=terrible", progress=False)
    # from the body's output on (a causal LM's output layer reads it as it is), every log-probability is
    # computed in float32: multi-token words' normalisers and the vocabulary's log Z included
    assert gaps and max(gaps) < 1e-5


def test_verbalizer_auto_keeps_the_users_patterns(reviews_folder, capsys):
    patterns = ["{text} It was {mask}.", "{text} All in all, {mask}."]
    code, stdout, err = run_cli(capsys, "eval", "--task", reviews_folder, "--model", "bert-tiny", "--method", "pet",
                                "--pattern", patterns[0], "--pattern", patterns[1], "--verbalizer", "auto", "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["prompt"]["patterns"] == patterns  # an ensemble of both, with searched words


@pytest.mark.parametrize("extra, message", [
    (["--pattern", "auto", "--pattern", "{text} It was {mask}."], "--pattern auto chooses the patterns itself"),
    (["--verbalizer", "auto-words"], "is not label=word"),
    (["--method", "head", "--pattern", "auto"], "has no option patterns"),
    (["--pattern", "auto", "--distil", "--unlabelled", "x.jsonl"], "--distil needs an ensemble"),
])
def test_bad_auto_options_fail_with_one_line_and_exit_2(extra, message, reviews_folder, tmp_path, capsys):
    argv = ["train", "--task", reviews_folder, "--model", "bert-tiny", "--method", "pet", "--quiet",
            "--out", tmp_path / "run", *extra]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pet_on_smollm2_without_a_built_in_prompt(reviews_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--task", reviews_folder, "--model", "smollm2-135m", "--method", "pet",
                           "--steps", "1", "--quiet", "--out", out)
    assert code == 0, err
    assert "prompt search chose" in stdout
    search = json.loads((out / "prompt_search.json").read_text())
    assert all(Pattern.parse(p).ends_with_mask for p in search["patterns"])
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0.5
