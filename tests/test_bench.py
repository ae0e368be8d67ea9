"""`pretune bench`: the few-shot harness end to end on a tiny configuration (real bert-tiny, the
packaged example task), resuming, the report's numbers, and its answers to bad input."""

import json

import numpy as np
import pytest

from conftest import EXAMPLES
from pretune.bench import arms as arms_module
from pretune.bench.arms import ARMS, Arm, resolve_arms
from pretune.bench.report import write_report
from pretune.cli import main
from pretune.errors import UserError

TINY = ["--task", EXAMPLES, "--model", "bert-tiny", "--seeds", "13,21", "--steps", "3", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_bench_end_to_end_then_resume_redoes_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    code, stdout, err = run_cli(capsys, "bench", *TINY, "--methods", "head,hf-full", "--threads", "2", "--out", out)
    assert code == 0, err
    assert "4 runs done, 0 already" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "results.csv", "report.md", "accuracy.png", "learning_curves.png"} <= names
    assert any(name.startswith("confusion_") for name in names) and "logs" not in names  # no failure left a log

    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sum(line.startswith('{"key"') for line in (out / "results.json").read_text().splitlines()) == 4  # a line a run
    assert sorted((r["key"]["arm"], r["key"]["seed"]) for r in runs) == [
        ("head", 13), ("head", 21), ("hf-full", 13), ("hf-full", 21)
    ]
    for run in runs:
        assert run["metric"] == "accuracy" and len(run["predictions"]) == len(run["targets"]) == 32
        assert run["peak_rss_mib"] > 50 and len(run["loadavg_before"]) == 3 and run["history"]
        accuracy = np.mean(np.array(run["predictions"]) == np.array(run["targets"]))
        assert run["test"]["accuracy"] == pytest.approx(accuracy)  # the record agrees with its own predictions
    by_arm = {r["key"]["arm"]: r for r in runs}
    assert by_arm["head"]["trainable_parameters"] == 128 * 2 + 2  # frozen body: the linear head only
    assert by_arm["hf-full"]["trainable_parameters"] > 4_000_000  # everything trains
    assert by_arm["head"]["adapter_bytes"] < 4096 < by_arm["hf-full"]["adapter_bytes"]

    report = (out / "report.md").read_text()
    head = [100 * r["test"]["accuracy"] for r in runs if r["key"]["arm"] == "head"]
    assert f"| head | pretune | {np.mean(head):.1f} ({np.std(head):.1f}) |" in report
    assert "| hf-full | transformers |" in report and "![" in report
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 4

    before = (out / "results.json").read_text()
    code, stdout, _ = run_cli(capsys, "bench", *TINY, "--methods", "head,hf-full", "--out", out)
    assert code == 0 and "0 runs done, 4 already" in stdout
    assert (out / "results.json").read_text() == before


def test_unknown_arm_is_one_line_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    code, _, err = run_cli(capsys, "bench", *TINY, "--methods", "head,magic", "--out", out)
    assert code == 2 and "unknown arm 'magic'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_folder_with_other_files_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, _, err = run_cli(capsys, "bench", *TINY, "--methods", "head", "--out", out)
    assert code == 2 and "holds no results.json" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--seeds", "13,x"], "--seeds: 'x' is not a whole number"), (["--seeds", "13,13"], "names a seed twice"),
     (["--model", "no-such-model"], "cannot load model 'no-such-model'")],
)
def test_bad_bench_options_are_one_line(tmp_path, capsys, extra, message):
    code, _, err = run_cli(capsys, "bench", *TINY, *extra, "--methods", "head", "--out", tmp_path / "bench")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_an_arm_whose_method_is_missing_is_skipped_with_its_reason(monkeypatch):
    future = Arm("future", "pretune", "a method still to come", arms_module.run_pretune, {"method": "future"},
                 method="future")
    monkeypatch.setitem(ARMS, "future", future)
    runnable, skipped = resolve_arms(["head", "future"])
    assert [arm.name for arm in runnable] == ["head"]
    assert skipped == {"future": "method 'future' is not in this version of pretune"}
    with pytest.raises(UserError, match="names an arm twice"):
        resolve_arms(["head", "head"])


def _record(task, arm, seed, accuracy, family="pretune"):
    predictions = [1] * 10
    targets = [1] * int(10 * accuracy) + [0] * (10 - int(10 * accuracy))
    return {
        "key": {"task": task, "model": "m", "arm": arm, "seed": seed, "config": "c"},
        "metric": "accuracy", "arm_info": {"family": family, "about": "", "note": ""},
        "protocol": {"steps": 100, "batch_size": 8, "eval_batch_size": 32, "shots": None},
        "test": {"accuracy": accuracy}, "dev": {"accuracy": accuracy}, "history": [], "labels": ["neg", "pos"],
        "predictions": predictions, "targets": targets, "trainable_parameters": 10, "adapter_bytes": 100,
        "train_seconds": 1.0, "train_examples_per_second": 8.0, "eval_examples_per_second": 50.0,
        "peak_rss_mib": 500.0, "loadavg_before": [1.0, 1, 1], "loadavg_after": [2.0, 1, 1],
    }


def test_report_population_std_published_reference_and_table_3(tmp_path):
    runs = [_record("sst-2", "head", s, a) for s, a in ((13, 0.8), (21, 0.6))]
    runs += [_record("mr", "head", 13, 0.7), _record("sst-2", "hf-full", 13, 0.5, "transformers")]
    runs.append({**_record("sst-2", "head", 42, 0.1), "key": {**runs[0]["key"], "seed": 42, "config": "other"}})
    keys = [run["key"] for run in runs[:-1]]  # the last one ran under other settings: not reported
    write_report(tmp_path, runs, keys, arms={"head": {}, "hf-full": {}})
    report = (tmp_path / "report.md").read_text()
    assert "| head | pretune | 70.0 (10.0) |" in report  # population std of 80 and 60 is 10
    assert "| hf-full | transformers | 50.0 (0.0) |" in report
    assert "LM-BFF prompt-based fine-tuning | published, RoBERTa-large, not re-run | 92.7 (0.9)" in report
    assert "## Summary (LM-BFF Table 3 layout)" in report
    assert "| head | 70.0 (10.0) | 70.0 (0.0) |" in report or "| head | 70.0 (0.0) | 70.0 (10.0) |" in report
    assert (tmp_path / "sst-2_m_accuracy.png").is_file() and (tmp_path / "mr_m_accuracy.png").is_file()
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 4
