"""The bad-input corpus: every mistake a user can make, answered by the real command with one line
that names what and where (file and line, option, label), exit code 2, no traceback, and no run
folder left behind looking complete. Data files are in tests/bad_inputs/.

Most cases run `pretune.cli.main` in this process (fast); a few run `python -m pretune` in a
real process, where a traceback would show. Cases already covered elsewhere (an existing --out
folder, a bad --train or --pooling: tests/test_cli.py) are not repeated here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretune.cli import main

BAD = Path(__file__).parent / "bad_inputs"
TRAIN = ["--model", "bert-tiny", "--steps", "1", "--quiet"]  # a case's own options come after, and win

# id: (options after `pretune train`, the text the one line must contain). {task} is a good task folder.
CASES = {
    # data files: file and line
    "malformed JSON line": (["--task", BAD / "malformed.jsonl"], "malformed.jsonl:2: malformed JSON"),
    "JSON line not an object": (["--task", BAD / "not_an_object.jsonl"], "not_an_object.jsonl:2: expected a JSON object"),
    "missing column": (["--task", BAD / "missing_label.jsonl"], "missing_label.jsonl:2: missing column 'label'"),
    "missing column named by option": (
        ["--task", "{task}", "--text-field", "review"], "train.jsonl:1: missing column 'review'",
    ),
    "empty file": (["--task", BAD / "empty.jsonl"], "empty.jsonl: no examples in file"),
    "invalid UTF-8": (["--task", BAD / "invalid_utf8.jsonl"], "invalid_utf8.jsonl:2: not valid UTF-8"),
    "CSV row with an extra column": (["--task", BAD / "wrong_columns.csv"], "wrong_columns.csv:3: expected 2 columns"),
    "label not a finite number": (["--task", BAD / "not_finite.jsonl"], "not_finite.jsonl:2: label is not a finite number"),
    "number among label names": (["--task", BAD / "mixed_labels.jsonl"], "mixed_labels.jsonl:2: label 0.5 is a number"),
    "unknown label": (["--task", BAD / "unknown_label"], "dev.jsonl:3: unknown label 'neutral' in dev"),
    "labels with one class only": (["--task", BAD / "one_class.jsonl"], "one class only ('positive')"),
    "malformed task.json": (["--task", BAD / "bad_task_json"], "task.json:2: malformed JSON"),
    "missing data file": (["--task", BAD / "no_such_file.jsonl"], "task not found"),
    # patterns and verbalizers (PET)
    "pattern with no mask": (["--task", "{task}", "--method", "pet", "--pattern", "{text} It was good."], "has no {mask}"),
    "pattern with two masks": (
        ["--task", "{task}", "--method", "pet", "--pattern", "{text} {mask} or {mask}?"], "has 2 {mask}s",
    ),
    "unknown field in a pattern": (
        ["--task", "{task}", "--method", "pet", "--pattern", "{title}: {text} It was {mask}."], "unknown field {title}",
    ),
    "verbalizer missing a label": (
        ["--task", "{task}", "--method", "pet", "--verbalizer", "positive=great"], "no words for label 'negative'",
    ),
    "verbalizer with an empty word": (
        ["--task", "{task}", "--method", "pet", "--verbalizer", "positive=great negative=bad,"],
        "label 'negative' has an empty word",
    ),
    "verbalizer with an unknown label": (
        ["--task", "{task}", "--method", "pet", "--verbalizer", "positive=great negative=bad neutral=fine"],
        "unknown label 'neutral'",
    ),
    "label word the tokenizer cannot express": (
        ["--task", "{task}", "--method", "pet", "--verbalizer", "positive=\u2603 negative=bad"],
        "word '\u2603' of label 'positive' is not in the model's vocabulary",
    ),
    # models and methods
    "model that does not exist": (["--task", "{task}", "--model", "no-such-model"], "cannot load model 'no-such-model'"),
    "PET on an encoder without an LM head": (
        ["--task", "{task}", "--model", "minilm-l6", "--method", "pet"], "has no language-model head",
    ),
    # options that contradict each other, or make no sense
    "option of another method": (["--task", "{task}", "--method", "head", "--pattern", "{text} {mask}"], "has no option patterns"),
    "distillation without an ensemble": (
        ["--task", "{task}", "--method", "pet", "--distil", "--unlabelled", "{task}/train.jsonl"], "--distil needs an ensemble",
    ),
    "negative checkpoint interval": (["--task", "{task}", "--checkpoint-every", "-1"], "--checkpoint-every must be 0"),
    "train without a task": ([], "train needs --task and --out"),
    "resume with options of its own": (["--resume", "{out}", "--task", "{task}", "--lr", "0.1"], "drop --lr, --task"),
    "resume and overwrite": (["--resume", "{out}", "--overwrite"], "drop --overwrite"),
    "resume a missing run folder": (["--resume", "{out}"], "run folder not found"),
    "resume a folder that is no run": (["--resume", "{task}"], "not a pretune run folder (no run.json)"),
}
IN_A_REAL_PROCESS = {"invalid UTF-8", "unknown field in a pattern", "resume with options of its own"}


def options(case: str, task_folder: Path, out: Path) -> list[str]:
    given = [str(a).replace("{task}", str(task_folder)).replace("{out}", str(out)) for a in CASES[case][0]]
    if "--resume" in given:
        return ["train", *given, "--quiet"]
    return ["train", *TRAIN, *given, "--out", str(out)]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_complete_run_folder(case, tmp_path, task_folder, capsys):
    out = tmp_path / "run"
    argv = options(case, task_folder, out)
    if case in IN_A_REAL_PROCESS:
        done = subprocess.run([sys.executable, "-m", "pretune", *argv], capture_output=True, text=True, timeout=300)
        code, err = done.returncode, done.stderr
    else:
        code = main(argv)
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pretune: error: ") and CASES[case][1] in lines[0], lines[0]
    assert not out.exists() or json.loads((out / "run.json").read_text())["status"] != "complete"


def test_resuming_a_complete_run_is_refused_and_changes_nothing(tmp_path, task_folder, capsys):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--task", str(task_folder), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run is already complete; nothing to resume" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


PROMPT = ["--pattern", "{text} It was {mask}.", "--verbalizer", "positive=great negative=bad"]


@pytest.mark.parametrize("method", ["head", "pet"])
def test_text_longer_than_the_model_limit_is_truncated_never_an_error(tmp_path, method, capsys):
    """bert-tiny reads 512 tokens at most: a 28,000-word review (longer than a CSV field may be by
    default) trains and predicts like any other."""
    long = " ".join(["a warm and funny film with great acting"] * 3500)
    rows = [(long, "positive"), ("a dull and lifeless film", "negative"), ("i loved it", "positive"), ("a bore", "negative")]
    if method == "head":
        data = tmp_path / "long.csv"
        data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    else:
        data = tmp_path / "long.jsonl"
        data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    out = tmp_path / "run"
    method_options = PROMPT if method == "pet" else []
    argv = ["train", *TRAIN, "--method", method, *method_options, "--train", "bitfit", "--task", str(data), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", "--run", str(out), "--input", str(data), "--output", str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == len(rows)
