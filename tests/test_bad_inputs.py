"""The bad-input corpus: every mistake a user can make, answered by the real command with one line
that names what and where (file and line, option, label), exit code 2, no traceback, and no run
folder left behind looking complete. Data files are in tests/bad_inputs/.

Most cases run `pretune.cli.main` in this process (fast); a few run `python -m pretune` in a
real process, where a traceback would show. Cases already covered elsewhere (an existing --out
folder, a bad --train or --pooling: tests/test_cli.py) are not repeated here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretune.cli import main
from refusals import assert_refused, run_main

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
    # labels: never silently a class of their own
    "empty label": (["--task", BAD / "empty_label.jsonl"], "empty_label.jsonl:2: label is empty"),
    "empty label in a TSV": (["--task", BAD / "empty_label.tsv"], "empty_label.tsv:3: label is empty"),
    "label with a trailing space": (["--task", BAD / "padded_label.jsonl"], 'padded_label.jsonl:2: label "negative " has spaces'),
    "label with a leading space in a CSV": (["--task", BAD / "padded_label.csv"], 'padded_label.csv:3: label " negative" has spaces'),
    "integer label among names": (["--task", BAD / "int_among_names.jsonl"], "int_among_names.jsonl:3: label 1 is a number while"),
    "name among integer labels": (
        ["--task", BAD / "name_among_ints.jsonl"], 'name_among_ints.jsonl:3: label "positive" is a name while',
    ),
    "boolean label": (["--task", BAD / "label_bool.jsonl"], "label_bool.jsonl:2: label must be a name or a number"),
    "object as a label": (["--task", BAD / "label_object.jsonl"], "label_object.jsonl:2: label must be a name or a number"),
    # rows and files
    "text that is a number": (["--task", BAD / "text_not_string.jsonl"], "text_not_string.jsonl:2: column 'text' must be text"),
    "second text that is a list": (
        ["--task", BAD / "pair_not_string.jsonl"], "pair_not_string.jsonl:2: column 'text_pair' must be text",
    ),
    "5,000-digit number in a row": (["--task", BAD / "huge_number.jsonl"], "huge_number.jsonl:2: unreadable JSON"),
    "CSV quote never closed": (["--task", BAD / "unterminated_quote.csv"], "unterminated_quote.csv:4: unreadable row"),
    "CSV with a header only": (["--task", BAD / "header_only.csv"], "header_only.csv: no examples in file"),
    "unsupported file format": (["--task", BAD / "unsupported.txt"], "unsupported data format '.txt'"),
    # numeric options: finite, and in range (validation.RANGES)
    "infinite epochs": (["--task", "{task}", "--steps", None, "--epochs", "inf"], "--epochs must be a finite number"),
    "NaN epochs": (["--task", "{task}", "--steps", None, "--epochs", "nan"], "--epochs must be positive, got nan"),
    "NaN warmup ratio": (["--task", "{task}", "--warmup-ratio", "nan"], "--warmup-ratio must be a finite number"),
    "warmup ratio above 1": (["--task", "{task}", "--warmup-ratio", "1.5"], "--warmup-ratio must be a number in [0, 1]"),
    "seed of 2**70": (["--task", "{task}", "--seed", str(2**70)], "--seed must be a whole number in [0, 4294967295]"),
    "negative seed": (["--task", "{task}", "--seed", "-1"], "--seed must be a whole number in"),
    "unknown device": (["--task", "{task}", "--device", "tpu"], "unknown --device 'tpu'"),
    "malformed CUDA device": (["--task", "{task}", "--device", "cuda:x"], "unknown --device 'cuda:x'"),
    "Apple GPU where there is none": (["--task", "{task}", "--device", "mps"], "--device mps: no Apple GPU"),
    "LoRA rank 0": (["--task", "{task}", "--train", "lora", "--lora-r", "0"], "--lora-r must be a whole number in [1, 4096]"),
    "negative LoRA alpha": (["--task", "{task}", "--train", "lora", "--lora-alpha", "-3"], "--lora-alpha must be"),
    "hidden width 1e10": (["--task", "{task}", "--head", "mlp", "--hidden", "1e10"], "argument --hidden: invalid int value"),
    "hidden width of ten billion": (["--task", "{task}", "--head", "mlp", "--hidden", "10000000000"], "--hidden must be"),
    "negative max length": (["--task", "{task}", "--max-length", "-5"], "--max-length must be a whole number in [1,"),
    "max length 0": (["--task", "{task}", "--max-length", "0"], "--max-length must be"),
    "negative max grad norm": (["--task", "{task}", "--max-grad-norm", "-1"], "--max-grad-norm must be a number in [0,"),
    "NaN max grad norm": (["--task", "{task}", "--max-grad-norm", "nan"], "--max-grad-norm must be a finite number"),
    "negative weight decay": (["--task", "{task}", "--weight-decay", "-0.1"], "--weight-decay must be"),
    "infinite weight decay": (["--task", "{task}", "--weight-decay", "inf"], "--weight-decay must be a finite number"),
    "dropout of 1": (["--task", "{task}", "--dropout", "1.0"], "--dropout must be a number in [0, 1)"),
    "NaN dropout": (["--task", "{task}", "--dropout", "nan"], "--dropout must be a finite number"),
    "NaN learning rate": (["--task", "{task}", "--lr", "nan"], "--lr must be positive, got nan"),
    "infinite learning rate": (["--task", "{task}", "--lr", "inf"], "--lr must be a finite number"),
    "negative body learning rate": (["--task", "{task}", "--body-lr", "-1"], "--body-lr must be positive"),
    "batch size of a trillion": (["--task", "{task}", "--batch-size", str(10**12)], "--batch-size must be a whole number"),
    "eval batch size 0": (["--task", "{task}", "--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
    "gradient accumulation 0": (["--task", "{task}", "--grad-accum", "0"], "--grad-accum must be at least 1"),
    "a trillion steps": (["--task", "{task}", "--steps", str(10**12)], "--steps must be a whole number in [1,"),
    "evaluation every 0 steps": (["--task", "{task}", "--eval-every", "0"], "--eval-every must be a whole number in [1,"),
    "patience 0": (["--task", "{task}", "--patience", "0"], "--patience must be a whole number in [1,"),
    "0 shots": (["--task", "{task}", "--shots", "0"], "--shots must be a whole number in [1,"),
    "negative split seed": (["--task", "{task}", "--split-seed", "-1"], "--split-seed must be a whole number"),
    "checkpoint interval of a trillion": (["--task", "{task}", "--checkpoint-every", str(10**12)], "--checkpoint-every must be"),
    "a huge soft-token count": (
        ["--task", "{task}", "--method", "ptuning", "--pattern", "[P*99999999999999999999]{text} It was {mask}."],
        "asks for more than 4096 soft tokens",
    ),
    "prompt length 0": (["--task", "{task}", "--method", "ptuning", "--prompt-length", "0"], "--prompt-length must be"),
    "prompt length 100000": (
        ["--task", "{task}", "--method", "deep-prompt", "--prompt-length", "100000"], "--prompt-length must be a whole number",
    ),
    "NaN auxiliary LM weight": (["--task", "{task}", "--method", "pet", "--aux-lm-weight", "nan"], "--aux-lm-weight must be"),
    "distillation temperature 0": (
        ["--task", "{task}", "--method", "pet", "--distil-temperature", "0"], "--distil-temperature must be",
    ),
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
IN_A_REAL_PROCESS = {
    "invalid UTF-8", "unknown field in a pattern", "resume with options of its own", "CSV quote never closed",
}


def options(case: str, task_folder: Path, out: Path) -> list[str]:
    given = [str(a).replace("{task}", str(task_folder)).replace("{out}", str(out)) for a in CASES[case][0]]
    if "--resume" in given:
        return ["train", *given, "--quiet"]
    base = list(TRAIN)
    if "None" in given:  # ("--steps", None): the case drops a default option
        at = given.index("None")
        del base[base.index(given[at - 1]) : base.index(given[at - 1]) + 2], given[at - 1 : at + 1]
    return ["train", *base, *given, "--out", str(out)]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_complete_run_folder(case, tmp_path, task_folder, capsys):
    out = tmp_path / "run"
    argv = options(case, task_folder, out)
    if case in IN_A_REAL_PROCESS:
        done = subprocess.run([sys.executable, "-m", "pretune", *argv], capture_output=True, text=True, timeout=300)
        code, err = done.returncode, done.stderr
    else:
        code = run_main(argv)
        err = capsys.readouterr().err
    assert_refused(code, err, CASES[case][1], out)


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


# ---------------------------------------------------------------- task.json: an object of the right types

LABELS = '"labels": ["negative", "positive"]'
TASK_JSON = {
    "task.json that is a list": ('["negative", "positive"]', "task.json: expected a JSON object, got list"),
    "labels that are one string": ('{"labels": "negative,positive"}', "'labels' must be a list of names"),
    "duplicate labels": ('{"labels": ["negative", "positive", "negative"]}', "label 'negative' is listed twice"),
    "empty label name": ('{"labels": ["negative", "positive", ""]}', 'label "" is empty or has spaces around it'),
    "label name with a trailing space": ('{"labels": ["negative", "positive "]}', 'label "positive " is empty or has spaces'),
    "label that is an object": ('{"labels": ["negative", {"name": "positive"}]}', 'label {"name": "positive"} is not a name'),
    "labels that are booleans": ('{"labels": [true, false]}', "label true is not a name"),
    "metric that is a number": ("{" + LABELS + ', "metric": 1}', "'metric' must be a name, got 1"),
    "unknown metric": ("{" + LABELS + ', "metric": "bleu"}', "unknown metric 'bleu'"),
    "task name that is a list": ('{"task": ["sst-2"]}', "'task' must be a name"),
    "5,000-digit number in task.json": ("{" + LABELS + ', "size": 1' + "0" * 5000 + "}", "task.json: unreadable JSON"),
    "deeply nested task.json": ('{"source": ' + "[" * 100_000 + "]" * 100_000 + "}", "task.json: unreadable JSON"),
    "one label in task.json": ('{"labels": ["positive"]}', "a task needs at least two labels"),
    "labels the data does not use": ('{"labels": ["good", "bad"]}', "train.jsonl:1: unknown label 'positive'"),
}


@pytest.mark.parametrize("case", list(TASK_JSON))
def test_bad_task_json_is_one_line(case, tmp_path, task_folder, capsys):
    (task_folder / "task.json").write_text(TASK_JSON[case][0])
    out = tmp_path / "run"
    code = run_main(["train", *TRAIN, "--task", task_folder, "--out", out])
    assert_refused(code, capsys.readouterr().err, TASK_JSON[case][1], out)


# ---------------------------------------------------------------- files that are there but cannot be read


def _unreadable(path: Path) -> None:
    path.write_text('{"text": "fine", "label": "positive"}\n')
    path.chmod(0)


SPECIAL = {  # id: (file of the task folder, how it is made, the line)
    "dev file that is a FIFO": ("dev.jsonl", os.mkfifo, "dev.jsonl: not a regular file"),
    "dev file that is a folder": ("dev.jsonl", Path.mkdir, "dev.jsonl: is a folder"),
    "dev file in a symlink loop": ("dev.jsonl", lambda p: p.symlink_to(p), "dev.jsonl: cannot be read (Too many levels"),
    "dev file linked to nothing": ("dev.jsonl", lambda p: p.symlink_to(p.parent / "gone"), "a symbolic link to nothing"),
    "test file that is a FIFO": ("test.jsonl", os.mkfifo, "test.jsonl: not a regular file"),
    "test file in a symlink loop": ("test.jsonl", lambda p: p.symlink_to(p), "test.jsonl: cannot be read"),
    "task.json that is a folder": ("task.json", Path.mkdir, "task.json: is a folder, not a task.json"),
    "task.json that is a FIFO": ("task.json", os.mkfifo, "task.json: not a regular file"),
    "dev file without read permission": ("dev.jsonl", _unreadable, "dev.jsonl: cannot be read (Permission denied)"),
}


@pytest.mark.parametrize("case", list(SPECIAL))
def test_a_split_file_that_cannot_be_read_is_an_error_not_a_missing_split(case, tmp_path, task_folder, capsys):
    name, make, expected = SPECIAL[case]
    if "permission" in case and os.geteuid() == 0:
        pytest.skip("root reads any file")
    (task_folder / name).unlink()
    make(task_folder / name)
    out = tmp_path / "run"
    code = run_main(["train", *TRAIN, "--task", task_folder, "--out", out])
    assert_refused(code, capsys.readouterr().err, expected, out)


def test_a_task_file_that_is_a_fifo_is_refused_without_waiting(tmp_path, capsys):
    os.mkfifo(tmp_path / "data.jsonl")
    code = run_main(["train", *TRAIN, "--task", tmp_path / "data.jsonl", "--out", tmp_path / "run"])
    assert_refused(code, capsys.readouterr().err, "data.jsonl: not a regular file", tmp_path / "run")


# ---------------------------------------------------------------- pretune's own errors: exit 1, traceback in a log


def test_an_internal_error_is_one_line_naming_the_log_with_the_traceback(tmp_path, task_folder, capsys, monkeypatch):
    import pretune.api

    def broken(*args, **kwargs):
        raise RuntimeError("a bug of pretune's own")

    monkeypatch.setattr(pretune.api, "evaluate_untrained", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code = run_main(["eval", "--task", task_folder, "--model", "bert-tiny"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in lines[0]
    assert lines[0].startswith("pretune: internal error (RuntimeError: a bug of pretune's own); the traceback is in ")
    log = Path(lines[0].split("the traceback is in ")[1].split(";")[0])
    assert log.parent == tmp_path and "Traceback" in log.read_text() and "in broken" in log.read_text()


def test_an_internal_error_in_training_goes_to_the_run_folder_log(tmp_path, task_folder, capsys, monkeypatch):
    from pretune.training.trainer import Trainer

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("division by zero in the trainer")

    monkeypatch.setattr(Trainer, "fit", broken)
    out = tmp_path / "run"
    code = run_main(["train", *TRAIN, "--task", task_folder, "--out", out])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and f"the traceback is in {out / 'train.log'}" in lines[0]
    assert "Traceback" in (out / "train.log").read_text()
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "failed" and "ZeroDivisionError" in status["error"]


def test_no_traceback_reaches_the_terminal_of_a_real_process(tmp_path, task_folder):
    """An internal error and an OSError in a real process: one line each, exit 1 and 2."""
    script = (
        "import sys, pretune.api as api\n"
        "def boom(*a, **k): raise MemoryError('out of memory somewhere')\n"
        "api.evaluate_untrained = boom\n"
        "from pretune.cli import main\n"
        f"sys.exit(main(['eval', '--task', {str(task_folder)!r}, '--model', 'bert-tiny']))\n"
    )
    long = tmp_path / ("r" * 300)
    internal, too_long = (  # both at once: each spends most of its time importing torch
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TMPDIR": str(tmp_path)}),
        subprocess.Popen([sys.executable, "-m", "pretune", "train", *TRAIN, "--task", str(task_folder), "--out", str(long)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
    )
    errors = [run.communicate(timeout=300)[1] for run in (internal, too_long)]
    assert internal.returncode == 1 and len(errors[0].strip().splitlines()) == 1 and "Traceback" not in errors[0]
    assert "internal error (MemoryError" in errors[0]
    assert too_long.returncode == 2 and errors[1].strip().splitlines() == [f"pretune: error: {long}: File name too long"]
