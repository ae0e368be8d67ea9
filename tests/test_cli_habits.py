"""The habits users bring from the transformers Trainer: its option names, `--config run.yaml`,
`--help` with defaults and choices, `--version`; and the package as pip installs it (the wheel's
contents, matplotlib as an optional extra)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from pretune import plots
from pretune.cli import build_parser, main
from pretune.cli_options import TRAINER_ALIASES, subcommands
from pretune.cli_run import DTYPES, METHOD_OPTIONS, METHODS, run_config_from_args

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str):
    return build_parser().parse_args([str(a) for a in argv])


def usage_error(capsys, *argv) -> str:
    """Runs the command, which must refuse its arguments: exit 2 and one line; returns that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- the Trainer's option names


TRAIN_OPTIONS = subcommands(build_parser())["train"]._option_string_actions
ALIASES_OF_TRAIN = [(ours, theirs) for ours, theirs in TRAINER_ALIASES.items()
                    if ours in TRAIN_OPTIONS and TRAIN_OPTIONS[ours] is TRAIN_OPTIONS[theirs]]
VALUES = {"--out": "runs/x", "--model": "bert-tiny", "--max-length": "40", "--steps": "7", "--epochs": "2.5",
          "--eval-every": "3", "--checkpoint-every": "6", "--eval-batch-size": "5", "--grad-accum": "4",
          "--weight-decay": "0.3", "--warmup-ratio": "0.25", "--max-grad-norm": "0.5",
          "--lr-scheduler": "cosine", "--report-to": "tensorboard"}


@pytest.mark.parametrize(("ours", "theirs"), ALIASES_OF_TRAIN, ids=[a for a, _ in ALIASES_OF_TRAIN])
def test_a_trainer_name_sets_what_pretunes_own_name_sets(ours, theirs):
    value = [] if ours == "--overwrite" else [VALUES[ours]]
    assert vars(parse("train", theirs, *value)) == vars(parse("train", ours, *value)) != vars(parse("train"))


@pytest.mark.parametrize("option", ["--lr-scheduler", "--report-to"])
def test_the_engines_options_get_their_trainer_names(option):
    train = subcommands(build_parser())["train"]
    if option not in train._option_string_actions:
        pytest.skip(f"{option} is not an option of pretune train yet (its row in TRAINER_ALIASES waits for it)")
    assert train._option_string_actions[TRAINER_ALIASES[option]] is train._option_string_actions[option]


def test_every_alias_is_a_name_the_transformers_world_uses():
    from transformers import TrainingArguments

    fields = {f"--{field.name}" for field in dataclasses.fields(TrainingArguments)}
    # run_glue.py's own arguments, and two TrainingArguments of transformers 4.x that 5.x dropped
    # (warmup_steps < 1 is now the ratio; overwrite_output_dir), still in users' scripts.
    elsewhere = {"--model_name_or_path", "--max_seq_length", "--warmup_ratio", "--overwrite_output_dir"}
    assert set(TRAINER_ALIASES.values()) - fields <= elsewhere


def test_learning_rate_is_the_rate_of_every_trainable_parameter():
    head = run_config_from_args(parse("train", "--learning_rate", "0.003", "--train", "full"))
    assert (head.training.lr, head.training.body_lr) == (0.003, 0.003)
    pet = run_config_from_args(parse("train", "--method", "pet", "--learning_rate", "1e-5"))
    assert (pet.training.lr, pet.training.body_lr) == (None, 1e-5)  # pet has no parameters of its own


def test_learning_rate_beside_lr_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", str(tmp_path / "task"), "--out", str(out), "--learning_rate", "1e-3", "--lr", "1e-2"])
    err = capsys.readouterr().err
    assert code == 2 and "--learning_rate sets every trainable parameter's rate" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_probe_takes_learning_rate_for_its_only_rate():
    args = parse("probe", "--data", "d", "--model", "m", "--out", "o", "--learning_rate", "0.02", "--num_train_epochs", "3")
    assert (args.lr, args.epochs) == (0.02, 3)


# ---------------------------------------------------------------- --config FILE


def test_config_values_and_the_command_line_overriding_them(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("method: pet\nsteps: 5\nlearning_rate: 0.001\nbatch-size: 4\ncalibrate: true\n"
                      "pattern: ['{text} It was {mask}.', 'Review: {text} {mask}']\noutput_dir: runs/from-config\n")
    args = parse("train", "--config", config, "--steps", "9", "--pattern", "{mask}: {text}")
    run = run_config_from_args(args)
    assert (run.method, run.training.steps, run.training.batch_size) == ("pet", 9, 4)  # --steps 9 overrides 5
    assert run.method_options == {"calibrate": True, "patterns": ["{mask}: {text}"]}  # a repeated option: replaced
    assert (run.training.body_lr, args.out) == (0.001, "runs/from-config")


def test_an_abbreviated_config_option_reads_the_file_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 5\n")
    assert parse("train", "--conf", config).steps == parse("train", f"--confi={config}").steps == 5


def test_a_json_config_and_comma_lists(tmp_path):
    config = tmp_path / "bench.json"
    config.write_text(json.dumps({"task": "sst-2", "seeds": [13, 21], "methods": ["head", "pet"], "jobs": 2, "quiet": True}))
    args = parse("bench", f"--config={config}", "--jobs", "1")
    assert (args.seeds, args.methods, args.jobs, args.quiet) == ("13,21", "head,pet", 1, True)


def test_a_config_gives_required_options(tmp_path):
    config = tmp_path / "predict.yml"
    config.write_text("run: runs/a\ninput: new.jsonl\n")
    args = parse("predict", "--config", config)
    assert (args.run, args.input) == ("runs/a", "new.jsonl")


@pytest.mark.parametrize(("text", "name", "message"), [
    ("steps: 5\nstepz: 6\n", "run.yaml", "unknown option 'stepz'"),
    ("config: other.yaml\n", "run.yaml", "unknown option 'config'"),
    ("- steps\n- 5\n", "run.yaml", "expected option: value pairs, found a list"),
    ("steps: [5\n", "run.yaml", "cannot read it"),
    ('{"steps": 5,}', "run.json", "cannot read it"),
    ("quiet: yes please\n", "run.yaml", "'quiet' is a switch: give true or false"),
    ("steps: five\n", "run.yaml", "'steps': invalid int value 'five'"),
    ("method: magic\n", "run.yaml", "'method': unknown value 'magic' (choose one of head, pet,"),
    ("steps: 5\n", "run.toml", "give a .yaml, .yml or .json file"),
])
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, capsys, text, name, message):
    config = tmp_path / name
    config.write_text(text)
    err = usage_error(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert message in err and (name == "run.toml" or f"--config {config}: " in err)
    assert not (tmp_path / "run").exists()


def test_an_unknown_command_or_choice_is_one_line(capsys):
    assert "pretune: error: unknown command 'trian' (choose one of train, eval," in usage_error(capsys, "trian")
    assert "unknown --dtype 'bf16' (choose one of auto, float32, bfloat16, float16)" in usage_error(
        capsys, "bench", "--dtype", "bf16")


def test_a_missing_config_file(tmp_path, capsys):
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in usage_error(capsys, "eval", "--config", tmp_path / "nope.yaml")


def test_train_from_a_config_file_with_an_override(tmp_path, task_folder, capsys):
    """End to end on bert-tiny: the file's values reach the run, the command line's win."""
    config = tmp_path / "run.yaml"
    config.write_text(f"task: {task_folder}\nmodel_name_or_path: bert-tiny\nmethod: head\nmax_steps: 2\n"
                      "learning-rate: 0.01\nquiet: true\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--max_steps", "3", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    import yaml

    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"] == "bert-tiny" and recorded["training"]["lr"] == 0.01


# ---------------------------------------------------------------- --help and --version


def help_text(capsys, monkeypatch, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping: one line per option
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(subcommands(build_parser())))
def test_help_shows_defaults_and_plain_metavars(command, capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, command)
    parser = subcommands(build_parser())[command]
    blocks = re.split(r"\n(?=  -)", text)  # one per option: its invocation, then its help
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        flag = action.option_strings[0]
        (block,) = [b for b in blocks if re.match(rf"  {flag}[ ,]", b)]
        if action.default is not None:
            assert "default" in block, f"{command} {flag}: no default shown"
        invocation = block.splitlines()[0].strip().split("  ")[0]
        internal = action.dest.upper() if action.dest != flag.lstrip("-").replace("-", "_") else None
        for metavar in re.findall(r"--[\w-]+ ([^\s,]+)", invocation):
            assert "_" not in metavar and metavar != internal, f"{command} {flag}: metavar {metavar}"
    assert "OPT_" not in text and "BODY" not in text and "JSON_OUT" not in text


@pytest.mark.parametrize(("steps", "evaluated_at"), [(20, [8, 16, 20]), (100, list(range(10, 101, 10)))])
def test_eval_every_default_is_what_help_says(steps, evaluated_at, tmp_path, capsys, monkeypatch):
    """16 training examples in batches of 2: 8 steps an epoch. 20 steps: once per epoch (a tenth would be
    every 2 steps), and at the last step; 100 steps: a tenth of them."""
    text = " ".join(help_text(capsys, monkeypatch, "train").split())
    assert ("optimizer steps between dev evaluations, and one at the last step (default: a tenth of the steps, "
            "but never more often than once per epoch)") in text
    out = tmp_path / "run"
    assert main(["train", "--task", str(REPO / "src/pretune/examples/sentiment"), "--model", "bert-tiny", "--batch-size", "2",
                 "--steps", str(steps), "--quiet", "--out", str(out)]) == 0
    history = json.loads((out / "metrics.json").read_text())["train"]["history"]
    assert [row["step"] for row in history] == evaluated_at


def test_method_options_show_the_methods_own_defaults_and_choices():
    from pretune.methods import SPECS

    defaults = {}
    for spec in SPECS:
        for field in dataclasses.fields(spec.config_class):
            if field.name in spec.options and field.default is not dataclasses.MISSING:
                defaults.setdefault(field.name, set()).add(spec.fixed.get(field.name, field.default))
    for option in METHOD_OPTIONS:
        if option.default is not None:
            assert defaults[option.dest] == {option.default}, option.flag


def test_the_clis_fixed_sets_are_the_librarys():
    from pretune.bench import command as bench_command
    from pretune.cloze.channel import SCORINGS
    from pretune.cloze.label_rows import LABEL_TOKENS
    from pretune.cloze.readouts import READOUTS
    from pretune.cloze.soft import ENCODERS
    from pretune.cloze.verbalizer import AGGREGATIONS
    from pretune.heads import HEADS
    from pretune.methods import SPECS
    from pretune.methods.cloze import WEIGHTINGS
    from pretune.methods.head import POOLINGS
    from pretune.precision import DTYPES as LIBRARY_DTYPES
    from pretune.probe import runner

    choices = {option.flag: tuple(option.choices) for option in METHOD_OPTIONS if option.choices}
    assert choices == {"--head": HEADS, "--pooling": POOLINGS, "--aggregate": AGGREGATIONS, "--ensemble-weighting": WEIGHTINGS,
                       "--encoder": ENCODERS, "--readout": tuple(READOUTS), "--scoring": SCORINGS,
                       "--label-tokens": LABEL_TOKENS}
    assert METHODS == tuple(spec.name for spec in SPECS)
    assert DTYPES == bench_command.DTYPES == LIBRARY_DTYPES
    probe = subcommands(build_parser())["probe"]._option_string_actions
    assert tuple(probe["--method"].choices) == tuple(runner.METHODS)
    assert tuple(probe["--multi-token"].choices) == runner.MULTI_TOKEN and tuple(probe["--init"].choices) == runner.INITS
    assert tuple(probe["--encoder"].choices) == ENCODERS


def test_version_is_the_installed_distributions(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"pretune {metadata.version('pretune')}"


# ---------------------------------------------------------------- the package


def test_the_wheel_holds_the_example_set_and_no_tests(tmp_path):
    """The wheel pip would install, built from a copy of the project (the checkout stays clean)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           str(project), "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pretune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    examples = {name for name in names if name.startswith("pretune/examples/")}
    assert examples == {f"pretune/examples/sentiment/{f}" for f in ("task.json", "train.jsonl", "dev.jsonl", "test.jsonl")}
    assert "pretune/cli.py" in names and "pretune/cli_options.py" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/")) or "/tests/" in name]
    requires = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: matplotlib>=3.8; extra == \"plots\"" in requires
    assert not re.search(r"^Requires-Dist: matplotlib[^;]*$", requires, re.MULTILINE)  # not a hard dependency


def test_reports_without_matplotlib_write_their_tables_and_say_what_to_install(tmp_path, monkeypatch, capsys):
    from pretune.bench.report import write_report
    from pretune.probe.report import plot_relation

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setattr(plots, "_warned", False)
    runs = [_bench_record(seed, accuracy) for seed, accuracy in ((13, 0.8), (21, 0.6))]
    write_report(tmp_path, runs, [run["key"] for run in runs], arms={"head": {}})
    plot_relation({"runs": []}, tmp_path / "P19.png")
    err = capsys.readouterr().err
    assert err.strip() == ("pretune: plots need matplotlib: pip install 'pretune[plots]' "
                           "(the results are written without their PNG figures)")  # once, however many figures
    report = (tmp_path / "report.md").read_text()
    assert "| head | pretune | 70.0 (10.0) |" in report and "pretune[plots]" in report and "![" not in report
    assert not list(tmp_path.glob("*.png"))


def _bench_record(seed: int, accuracy: float) -> dict:
    targets = [1] * int(10 * accuracy) + [0] * (10 - int(10 * accuracy))
    return {
        "key": {"task": "sst-2", "model": "m", "arm": "head", "seed": seed, "config": "c"},
        "metric": "accuracy", "arm_info": {"family": "pretune", "about": "", "note": ""},
        "protocol": {"steps": 100, "batch_size": 8, "eval_batch_size": 32, "shots": None},
        "test": {"accuracy": accuracy}, "dev": {"accuracy": accuracy}, "history": [{"step": 10, "dev_accuracy": accuracy}],
        "labels": ["neg", "pos"], "predictions": [1] * 10, "targets": targets, "trainable_parameters": 10,
        "adapter_bytes": 100, "train_seconds": 1.0, "train_examples_per_second": 8.0, "eval_examples_per_second": 50.0,
        "peak_rss_mib": 500.0, "loadavg_before": [1.0, 1, 1], "loadavg_after": [2.0, 1, 1],
    }
