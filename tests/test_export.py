"""Adapters out: `pretune export` writes what PEFT and transformers load, and the label scores they
give back equal pretune's own (float32; tolerance 1e-5 on bert-tiny, 1e-4 on smollm2-135m; largest
differences measured 5.1e-7 and 1.6e-6). P-tuning and deep prompts are checked through examples/load_prompt.py,
the stand-alone loader the README shows. What a format cannot hold is one line and exit code 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import NEGATIVE, POSITIVE, REPO
from pretune.api import RunConfig, load_run, train_run
from pretune.cli import main
from pretune.errors import UserError
from pretune.export.formats import export_run
from pretune.training.trainer import TrainConfig

TRAIN = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
TEXTS = ["a warm film", "what a bore", "i loved it, great acting and a lovely story"]
PROMPT = {"patterns": ["{text} It was {mask}."], "verbalizer": "positive=great,good negative=terrible"}
EXAMPLE = REPO / "examples" / "load_prompt.py"


def loader():
    """examples/load_prompt.py, imported from its file: the code the README shows."""
    spec = importlib.util.spec_from_file_location("load_prompt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(tmp_path, name, method="pet", train=None, model="bert-tiny", backbone=None, **options) -> Path:
    rates = {"lr": 1e-2} if method != "pet" else {}
    options = {} if method == "head" else {**PROMPT, **options}
    config = RunConfig(task=list(TRAIN), model=model, method=method, method_options=options, train=train,
                       dtype="float32", training=TrainConfig(steps=3, batch_size=4, seed=1, device="cpu", body_lr=5e-3, **rates))
    return train_run(config, tmp_path / name, progress=False, backbone=backbone).folder


def pretune_probabilities(folder: Path) -> list[dict]:
    return [row["probabilities"] for row in load_run(folder, device="cpu", dtype="float32").predict(TEXTS)]


def assert_close(got: list[dict], expected: list[dict], tolerance: float) -> None:
    assert max(abs(g[label] - e[label]) for g, e in zip(got, expected) for label in e) <= tolerance


# ---------------------------------------------------------------- round trips on bert-tiny


@pytest.mark.slow
def test_a_lora_run_loads_in_peft_with_the_same_label_scores(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    folder = run(tmp_path, "lora", train="lora")
    out = export_run(folder, "peft", tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and sorted(config["target_modules"]) == ["query", "value"]
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        assert all(key.startswith("base_model.model.bert.") and ".default." not in key for key in weights.keys())
    load = loader()
    _, tokenizer, prompt, _ = load.load(out)
    base = AutoModelForMaskedLM.from_pretrained(config["base_model_name_or_path"])
    peft_model = PeftModel.from_pretrained(base, out).eval()
    got = [load.label_probabilities(peft_model, tokenizer, prompt, {}, text) for text in TEXTS]
    assert_close(got, pretune_probabilities(folder), 1e-5)
    untouched = AutoModelForMaskedLM.from_pretrained(config["base_model_name_or_path"]).eval()
    before = [load.label_probabilities(untouched, tokenizer, prompt, {}, text) for text in TEXTS]
    with pytest.raises(AssertionError):  # the adapter is what moves them
        assert_close(got, before, 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("train", ["full", "lora"])
def test_a_body_tuned_pet_run_loads_in_transformers_with_the_same_label_scores(tmp_path, train):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = run(tmp_path, train, train=train, calibrate=True)
    out = export_run(folder, "transformers", tmp_path / "model")
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    prompt = json.loads((out / "pretune_prompt.json").read_text())
    assert prompt["pattern"] == PROMPT["patterns"][0] and prompt["verbalizer"] == {"positive": ["great", "good"],
                                                                                   "negative": ["terrible"]}
    assert prompt["aggregate"] == "logsumexp" and len(prompt["calibration"]) == 2
    got = [loader().label_probabilities(model, AutoTokenizer.from_pretrained(out), prompt, {}, t) for t in TEXTS]
    assert_close(got, pretune_probabilities(folder), 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [
    ("ptuning", {"patterns": ["[P*2]{text} It was [P] {mask}."]}),
    ("prompt-tuning", {"prompt_length": 3}),
    ("deep-prompt", {"prompt_length": 4}),
])
def test_the_readme_loader_reproduces_trained_prompts(tmp_path, method, options):
    folder = run(tmp_path, method, method=method, **options)
    out = export_run(folder, "prompt", tmp_path / "prompt")
    with pytest.raises(UserError, match="exists and is not empty"):
        export_run(folder, "prompt", out)
    assert export_run(folder, "prompt", out, force=True) == out  # an earlier export is replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([method, "prompt"])  # no staging or old folder left
    load = loader()
    model, tokenizer, prompt, trained = load.load(out)
    assert set(trained) == {"prefix" if method == "deep-prompt" else "soft_prompt"}
    got = [load.label_probabilities(model, tokenizer, prompt, trained, text) for text in TEXTS]
    assert_close(got, pretune_probabilities(folder), 1e-5)


def test_the_readme_shows_the_loader_as_it_is_tested():
    readme = (REPO / "README.md").read_text()
    assert "```python\n" + EXAMPLE.read_text() + "```" in readme


@pytest.mark.slow
def test_smollm2_lora_through_the_cli_loads_in_peft_like_pretune_predict(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = run(tmp_path, "lora", train="lora", model="smollm2-135m", patterns=["Review: {text}\nSentiment: {mask}"],
                 verbalizer="positive=positive negative=negative")
    (tmp_path / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert main(["predict", "--run", str(folder), "--input", str(tmp_path / "new.jsonl")]) == 0
    predicted = [json.loads(line)["probabilities"] for line in capsys.readouterr().out.splitlines()]
    assert main(["export", str(folder), "--format", "peft", "--out", str(tmp_path / "adapter")]) == 0
    load = loader()
    _, tokenizer, prompt, _ = load.load(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(prompt["model"]["source"])
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert_close([load.label_probabilities(model, tokenizer, prompt, {}, t) for t in TEXTS], predicted, 1e-4)


# ---------------------------------------------------------------- refusals


def configured_run(root: Path, name: str, method: str, train: str | None = None, **options) -> Path:
    """A completed run folder whose weights are a stand-in: what a format cannot hold is decided from
    config.yaml alone, before any model loads, so these runs need no training."""
    from pretune.runs import RunFolder

    options = {} if method == "head" else {**PROMPT, **options}
    folder = RunFolder.create(root / name)
    folder.write_config(RunConfig(task="unused", method=method, method_options=options, train=train).to_dict())
    folder.save_weights({"stand_in": torch.zeros(1)})
    folder.write_metrics({})
    folder.complete()
    folder.release()
    return folder.path


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    return {
        "head": configured_run(root, "head", "head"),
        "ptuning": configured_run(root, "ptuning", "ptuning", prompt_length=2),
        "pet-full": configured_run(root, "pet-full", "pet", train="full"),
        "ptuning-lora": configured_run(root, "ptuning-lora", "ptuning", train="lora", prompt_length=2),
        "ensemble": configured_run(root, "ensemble", "pet", patterns=["{text} It was {mask}.", "{text} So {mask}."]),
        "head-readout": configured_run(root, "head-readout", "ptuning", readout="head"),
        "learned-labels": configured_run(root, "learned-labels", "pet", train="lora", label_tokens="learned"),
    }


@pytest.mark.parametrize("name, format, message", [
    ("ptuning", "peft", "--format peft holds LoRA adapters only; this run has --method ptuning's trained prompt (use --format prompt)"),
    ("pet-full", "peft", "this run has --train full (use --format transformers)"),
    ("ptuning", "transformers", "--method ptuning's trained prompt is not among them (use --format prompt)"),
    ("pet-full", "prompt", "--method pet trains no prompt"),
    ("ptuning-lora", "prompt", "its body trained too (--train lora)"),
    ("head", "transformers", "a --method head run holds pretune's own head"),
    ("ensemble", "transformers", "a pattern ensemble (2 patterns) cannot be exported"),
    ("head-readout", "prompt", "--readout head is pretune's own head at the mask"),
    ("learned-labels", "peft", "--label-tokens learned scores the label words with pretune's own trained rows, "
                               "which no export format holds; export covers runs with --label-tokens fixed"),
])
def test_what_a_format_cannot_hold_is_one_line_and_exit_2(tiny_runs, tmp_path, capsys, name, format, message):
    out = tmp_path / "out"
    assert main(["export", str(tiny_runs[name]), "--format", format, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_an_existing_folder_is_never_overwritten_silently(tiny_runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(tiny_runs["ptuning"]), "--format", "prompt", "--out", str(out)]) == 2
    assert "exists and is not empty; choose another folder or pass --force" in capsys.readouterr().err
    with pytest.raises(UserError, match="not an earlier export"):
        export_run(tiny_runs["ptuning"], "prompt", out, force=True)
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    with pytest.raises(UserError, match="unknown --format 'onnx'"):
        export_run(tiny_runs["ptuning"], "onnx", tmp_path / "x")
    with pytest.raises(UserError, match="not a pretune run folder"):
        export_run(tmp_path, "prompt", tmp_path / "x")
