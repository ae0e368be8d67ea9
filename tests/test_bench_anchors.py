"""The benchmark's anchors and the Table-3 protocol: a fixed test sample shared by every arm, arms on
their own model (head-mpnet, setfit-*), classification-only arms skipped on regression, the setfit
arm's wiring (a stand-in model: the real one is in the slow test), and the split-zip assembly of
mpnet-base (atomic; a bad or missing piece is one line)."""

import importlib.util
import io
import json
import os
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import EXAMPLES
from pretune import split_zip
from pretune.bench import setfit_arm
from pretune.bench.arms import ARMS, Arm, RunSpec
from pretune.bench.harness import BenchConfig, plan, run_key
from pretune.errors import UserError
from pretune.run_config import RunConfig, prepare_task

# ---------------------------------------------------------------- the test sample


def test_test_sample_is_fixed_in_order_and_the_same_for_every_seed():
    full = prepare_task(RunConfig(task=str(EXAMPLES)))
    assert len(full.test) == 32
    samples = [prepare_task(RunConfig(task=str(EXAMPLES), split_seed=seed, test_sample=10)).test for seed in (13, 42)]
    assert samples[0] == samples[1] and len(samples[0]) == 10
    positions = [full.test.index(example) for example in samples[0]]
    assert positions == sorted(positions)  # the file's order kept
    assert prepare_task(RunConfig(task=str(EXAMPLES), test_sample=32)).test == full.test  # not larger: all of it


def test_test_sample_is_part_of_a_runs_key_only_when_set():
    plain = RunSpec(task="t", model="m", seed=13)
    sampled = RunSpec(task="t", model="m", seed=13, test_sample=1000)
    assert "test_sample" not in plain.protocol() and sampled.protocol()["test_sample"] == 1000
    arm = ARMS["head"]
    assert run_key(arm, plain)["config"] != run_key(arm, sampled)["config"]


def test_a_test_sample_below_one_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--test-sample must be at least 1"):
        plan(BenchConfig(tasks=[str(EXAMPLES)], out=tmp_path, model="bert-tiny", arms=["head"], test_sample=0))


# ---------------------------------------------------------------- arms on their own model


def test_an_arm_with_its_own_model_runs_on_it_whatever_the_benchmark_model(monkeypatch, tmp_path):
    anchored = Arm("head-tiny", "pretune", "head on bert-tiny", ARMS["head"].runner, ARMS["head"].options,
                   method="head", model="bert-tiny")
    monkeypatch.setitem(ARMS, "head-tiny", anchored)
    runs, skipped = plan(BenchConfig(tasks=[str(EXAMPLES)], out=tmp_path, model="minilm-l6", arms=["head", "head-tiny"],
                                     seeds=[13], dtype="float32"))
    assert not skipped
    assert {run.arm.name: run.spec.model for run in runs} == {"head": "minilm-l6", "head-tiny": "bert-tiny"}
    assert {run.arm.name: run.key["model"] for run in runs} == {"head": "minilm-l6", "head-tiny": "bert-tiny"}


def test_the_anchor_arms_name_their_models():
    assert ARMS["head-mpnet"].model == "mpnet-base" and ARMS["setfit-mpnet"].model == "mpnet-base"
    assert ARMS["setfit-minilm"].model == "minilm-l6" and ARMS["setfit-mpnet"].classification_only
    assert ARMS["zero-shot"].classification_only and ARMS["prompt-tuning"].classification_only
    assert not ARMS["head"].classification_only and not ARMS["head-mpnet"].classification_only


def test_classification_only_arms_are_skipped_on_a_regression_task(monkeypatch, tmp_path):
    folder = tmp_path / "similarity"
    folder.mkdir()
    rows = [{"text": f"a {i}", "text_pair": f"b {i}", "label": float(i % 5)} for i in range(8)]
    for split in ("train", "dev", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "task.json").write_text(json.dumps({"labels": None, "metric": "pearson"}))
    classifier = Arm("classifier", "setfit", "classifies", ARMS["head"].runner, {}, classification_only=True)
    monkeypatch.setitem(ARMS, "classifier", classifier)
    runs, skipped = plan(BenchConfig(tasks=[str(folder)], out=tmp_path / "out", model="bert-tiny",
                                     arms=["head", "classifier"], seeds=[13], dtype="float32"))
    assert [run.arm.name for run in runs] == ["head"]
    assert skipped == {f"classifier on {folder}": "classification only; the task is a regression"}


# ---------------------------------------------------------------- the setfit arm's wiring


class StandInSetFit:
    """What the arm uses of a SetFitModel: the body's tokenizer, predict_proba, the head, save_pretrained."""

    def __init__(self):
        self.model_body = SimpleNamespace(tokenizer=SimpleNamespace(sep_token="</s>"), parameters=lambda: [torch.zeros(6)])
        self.model_head = SimpleNamespace(coef_=np.zeros((1, 4)), intercept_=np.zeros(1))
        self.trained_on = None

    def predict_proba(self, texts, as_numpy=True):
        # a fixed rule the test computes by hand
        return np.array([[0.2, 0.8] if "great" in t or "love" in t else [0.7, 0.3] for t in texts])

    def save_pretrained(self, folder):
        with open(os.path.join(folder, "model_head.pkl"), "wb") as out:
            out.write(b"x" * 123)


def test_setfit_arm_trains_on_the_split_and_scores_test_in_order(monkeypatch):
    model = StandInSetFit()
    monkeypatch.setattr(setfit_arm, "_model", lambda folder: model)
    monkeypatch.setattr(setfit_arm, "_train", lambda m, texts, labels, seed: setattr(m, "trained_on", (texts, labels, seed)))
    spec = ARMS["setfit-minilm"].spec_for(RunSpec(task=str(EXAMPLES), model="smollm2-135m", seed=13))
    task = spec.load_task()
    record = setfit_arm.run_setfit(ARMS["setfit-minilm"], spec)
    texts, labels, seed = model.trained_on
    assert texts == [e.text for e in task.train] and labels == task.targets(task.train) and seed == 13
    expected = [1 if ("great" in e.text or "love" in e.text) else 0 for e in task.test]
    assert record["predictions"] == expected and record["targets"] == task.targets(task.test)
    accuracy = np.mean(np.array(expected) == np.array(task.targets(task.test)))
    assert record["test"]["accuracy"] == pytest.approx(accuracy)
    assert record["trainable_parameters"] == 6 + 4 + 1 and record["adapter_bytes"] == 123


def test_setfit_arm_joins_a_pair_with_the_separator_token():
    task = SimpleNamespace()
    texts = setfit_arm._texts_of(StandInSetFit(), task)
    pair = SimpleNamespace(text="a man sings", text_pair="someone sings")
    assert texts([pair]) == ["a man sings </s> someone sings"]


def test_setfit_pairs_per_epoch_match_its_oversampling():
    # 16 + 16 examples: 2 x 120 same-label pairs + 32 self-pairs = 272 positive, 256 negative -> 2 x 272
    assert setfit_arm._pairs_per_epoch(32, [0] * 16 + [1] * 16) == 544


def test_setfit_arm_refuses_a_regression_task_in_one_line(monkeypatch):
    regression = SimpleNamespace(is_regression=True, name="sts-b")
    spec = SimpleNamespace(load_task=lambda: regression)
    with pytest.raises(UserError, match="the setfit arm classifies; task sts-b is a regression task"):
        setfit_arm.run_setfit(ARMS["setfit-mpnet"], spec)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setfit") is None, reason="setfit not installed (the bench extra)")
def test_setfit_arm_on_minilm_for_real():
    spec = ARMS["setfit-minilm"].spec_for(RunSpec(task=str(EXAMPLES), model="smollm2-135m", seed=13))
    record = setfit_arm.run_setfit(ARMS["setfit-minilm"], spec)
    assert len(record["predictions"]) == 32 and record["trainable_parameters"] > 20_000_000
    assert record["test"]["accuracy"] >= 0.75  # the packaged sentiment examples are easy for a sentence encoder


# ---------------------------------------------------------------- mpnet-base: the split zip


def _pieces(tmp_path, files: dict[str, bytes], count: int = 3):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    blob = buffer.getvalue()
    size = -(-len(blob) // count)
    paths = []
    for index in range(count):
        path = tmp_path / f"model.zip.{index + 1:03d}"
        path.write_bytes(blob[index * size : (index + 1) * size])
        paths.append(path)
    return paths


def test_pieces_join_and_unzip_into_the_target(tmp_path):
    pieces = _pieces(tmp_path, {"inner/config.json": b"{}", "inner/weights.bin": os.urandom(5000)})
    target = split_zip.assemble(pieces, tmp_path / "cache" / "inner", "inner")
    assert (target / "config.json").read_bytes() == b"{}" and (target / "weights.bin").stat().st_size == 5000
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["inner"]  # no staging left behind


def test_an_interrupted_assembly_leaves_no_target(tmp_path, monkeypatch):
    pieces = _pieces(tmp_path, {"inner/config.json": b"{}"})

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(split_zip.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        split_zip.assemble(pieces, tmp_path / "cache" / "inner", "inner")
    assert not (tmp_path / "cache" / "inner").exists() and not list((tmp_path / "cache").iterdir())


def test_a_bad_piece_is_one_line_and_leaves_nothing(tmp_path):
    pieces = _pieces(tmp_path, {"inner/config.json": b"{}" * 2000})
    pieces[1].write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a valid zip|corrupt") as error:
        split_zip.assemble(pieces, tmp_path / "cache" / "inner", "inner")
    assert "\n" not in str(error.value) and not list((tmp_path / "cache").iterdir())


def test_a_missing_package_or_piece_is_one_line():
    with pytest.raises(UserError, match="package 'no-such-piece-package' .* is not installed"):
        split_zip.find_pieces(("no-such-piece-package",), "model.zip")
    with pytest.raises(UserError, match="its piece model.zip.001 is missing"):
        split_zip.find_pieces(("numpy",), "model.zip")  # installed, but holds no piece


@pytest.mark.skipif(importlib.util.find_spec("setfit") is None, reason="setfit not installed")
def test_packaged_mpnet_is_an_encoder_when_installed():
    from pretune.backbones import PACKAGED, detect_kind, package_folder, resolve

    if package_folder(PACKAGED["mpnet-base"]) is None:
        pytest.skip("mpnet-base is not installed (make models-bench)")
    folder = resolve("mpnet-base")
    assert detect_kind(folder) == "encoder"  # its config names MPNetForMaskedLM, but its weights hold no LM head


# ---------------------------------------------------------------- PEFT arms reading label words of a causal LM


def test_the_pattern_is_rendered_up_to_its_mask_and_the_label_word_takes_the_space():
    from pretune.bench.baselines_lm import render

    assert render("Review: {text}\nSentiment: {mask}", "a gem", None) == ("Review: a gem\nSentiment:", " ")
    assert render("{text}\nQuestion: {text_pair} True or false?\nAnswer: {mask}", "A", "B") == (
        "A\nQuestion: B True or false?\nAnswer:", " ")
    assert render("{text} It was{mask}", "ok", None) == ("ok It was", "")


def test_label_word_readout_gives_the_label_words_next_token_logits(tiny_causal):
    from peft import get_peft_model

    from conftest import sentiment_task
    from pretune.bench import baselines
    from pretune.bench.baselines_lm import LabelWordReadout, causal_prompt, label_token_ids

    task = sentiment_task()
    source, words = causal_prompt(task)
    assert source.endswith("{mask}") and words == {"negative": "negative", "positive": "positive"}
    tokenizer = tiny_causal.tokenizer
    ids = label_token_ids(tokenizer, task, words, " ")
    assert ids == [tokenizer.encode(" negative")[0], tokenizer.encode(" positive")[0]]
    options = {"peft": "prompt_tuning", "virtual_tokens": 3}
    model = get_peft_model(tiny_causal.model, baselines._peft_config(options, task_type="CAUSAL_LM"))
    readout = LabelWordReadout(model, ids)
    encoded = torch.tensor([tokenizer.encode("Review: a gem\nSentiment:")])
    mask = torch.ones_like(encoded)
    with torch.no_grad():
        full = model(input_ids=encoded, attention_mask=mask).logits[:, -1]
        assert torch.allclose(readout(encoded, mask).logits, full[:, ids], atol=1e-5)
    trainable = [name for name, p in readout.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in name for name in trainable)  # only the virtual tokens train


def test_label_word_arms_refuse_what_they_cannot_read_in_one_line(tiny_causal):
    from types import SimpleNamespace as Namespace

    from pretune.bench.baselines_lm import _label_word_model, causal_prompt

    with pytest.raises(UserError, match="no built-in causal-LM prompt"):
        causal_prompt(Namespace(name="my-own-task", labels=["a", "b"]))
    with pytest.raises(UserError, match="read the next token of a causal LM"):
        _label_word_model("folder", Namespace(is_regression=False), None, {}, causal=False)
    assert ARMS["peft-prompt-lm"].classification_only and ARMS["peft-lora-lm"].options["readout"] == "label words"


# ---------------------------------------------------------------- the report


def test_anchor_runs_sit_beside_the_benchmark_models_arms_and_the_sample_is_named(tmp_path):
    from pretune.bench.report import write_report
    from test_bench import _record

    runs = [_record("sst-2", "zero-shot", 13, 0.8), _record("sst-2", "head-mpnet", 13, 0.9)]
    runs[1]["key"]["model"] = "mpnet-base"  # an anchor on its own model, in a benchmark of model "m"
    for run in runs:
        run["bench_model"] = "m"
        run["protocol"]["test_sample"] = 10  # the test set (10 examples) is the fixed sample
    write_report(tmp_path, runs, [r["key"] for r in runs], arms={"zero-shot": {}, "head-mpnet": {}})
    report = (tmp_path / "report.md").read_text()
    assert report.count("## sst-2 — m") == 1 and "| head-mpnet |" in report and "| zero-shot |" in report
    assert "a fixed random sample of the larger test set, the same for every arm and seed" in report
    assert "test sets larger than 10 examples are replaced by a fixed random sample" in report
