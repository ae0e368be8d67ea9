"""The `pretune` command: train | eval | predict | export | models | demo | bench | probe.

Every mistake the user can fix ends as one line on stderr and exit code 2, never a traceback; an
error of pretune's own ends as one line naming the log that holds the traceback, and exit code 1.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

from .bench.command import add_bench_parser, cmd_bench
from .cli_options import Parser, apply_conventions, option_names, subcommands
from .cli_run import DTYPE_HELP, DTYPES, add_column_arguments, add_run_arguments, run_config_from_args
from .console import quiet_libraries
from .errors import UserError, answer
from .export.command import add_export_parser, cmd_export
from .probe.command import add_probe_parser, cmd_probe
from .training.tracking import TRACKERS


def build_parser() -> Parser:
    parser = Parser(prog="pretune", description="Tune pretrained language models to small tasks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    train = commands.add_parser("train", help="train a method on a task and write a run folder")
    add_run_arguments(train, task_required=False)  # --resume DIR needs no --task
    train.add_argument("--out", metavar="DIR", help="run folder to create")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument(
        "--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint, with its own options"
    )
    train.add_argument(
        "--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (default: at an evaluation every 10 minutes; 0: at the end)"
    )
    train.add_argument(
        "--report-to", dest="report_to", default="none", choices=TRACKERS, metavar="TRACKER",
        help="also log each step and evaluation to this tracker, in RUN/tracking: " + " | ".join(TRACKERS)
        + " (default none; history.jsonl is written either way)",
    )

    evaluate = commands.add_parser("eval", help="evaluate a trained run, or a method as it is (zero-shot)")
    evaluate.add_argument("--run", metavar="DIR", help="a completed run folder (then --input is a labelled data file)")
    evaluate.add_argument("--input", metavar="FILE", help="labelled data file to evaluate a run on")
    add_run_arguments(evaluate, task_required=False)
    evaluate.add_argument("--json", dest="json_out", metavar="FILE", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="label new data with a trained run")
    predict.add_argument("--run", required=True, metavar="DIR", help="a completed run folder")
    predict.add_argument("--input", required=True, metavar="FILE", help="data file (.jsonl, .csv, .tsv, .parquet); labels not needed")
    predict.add_argument("--output", metavar="FILE", help="write predictions here (JSON lines) instead of stdout")
    predict.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP + "; default: the run's own")
    add_column_arguments(predict)

    commands.add_parser("models", help="list the packaged models and whether they are installed")

    add_export_parser(commands)
    add_bench_parser(commands, add_column_arguments)
    add_probe_parser(commands)

    demo = commands.add_parser("demo", help="the main job in small: few-shot SST-2 on the default model")
    demo.add_argument("--model", default=None, help="model (default: smollm2-135m)")
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="where the demo's run folders go")
    demo.add_argument("--quick", action="store_true", help="the packaged example set and a few steps per arm (for tests)")
    apply_conventions(parser, _version())  # last: every subcommand above gets --config and the Trainer's names
    return parser


def _version() -> str:
    try:
        return metadata.version("pretune")  # the installed distribution's, as pip reports it
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run from a checkout)"


# ---------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from .api import resume_run, train_run
    from .training.engine import processes

    if args.resume:
        _refuse_options_beside_resume(args)
        device = None if args.device == "auto" else args.device
        result = resume_run(args.resume, progress=not args.quiet, device=device)
    else:
        if not args.task or not args.out:
            raise UserError("train needs --task and --out (or --resume DIR to continue an interrupted run)")
        result = train_run(run_config_from_args(args), out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    if processes().is_main:  # a data-parallel run prints its summary once
        _print_summary(result.metrics, result.folder)
    return 0


# What --resume may come with: every other option is the run's own, in its config.yaml.
RESUME_COMPANIONS = {"command", "resume", "out", "device", "quiet", "config"}


def _refuse_options_beside_resume(args) -> None:
    train = subcommands(build_parser())["train"]
    defaults = vars(train.parse_args(["--resume", args.resume]))
    given = [name for name, value in vars(args).items() if name not in RESUME_COMPANIONS and value != defaults.get(name)]
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        given.append("out")
    if given:
        flags = option_names(train)
        named = ", ".join(flags.get(name, name) for name in sorted(given))
        raise UserError(f"--resume {args.resume} continues the run with the options in its config.yaml; drop {named}")


def cmd_eval(args) -> int:
    if args.run:
        metrics = _evaluate_run(args)
    else:
        if not args.task:
            raise UserError("eval needs --run DIR --input FILE, or --task to evaluate a method as it is (zero-shot)")
        from .api import evaluate_untrained

        metrics = evaluate_untrained(run_config_from_args(args), progress=not args.quiet)
    if args.json_out:
        _check_output_folder(args.json_out, "--json")
    print(json.dumps(metrics, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _evaluate_run(args) -> dict:
    from .api import load_run
    from .data import Columns, check_labels, read_examples
    from .training.evaluation import evaluate

    if not args.input:
        raise UserError("eval --run needs --input FILE (labelled data)")
    predictor = load_run(args.run, device=args.device, dtype=args.dtype)
    examples = read_examples(args.input, Columns(args.text_field, args.pair_field, args.label_field))
    check_labels(examples, predictor.task.labels, "input")
    metrics, _ = evaluate(predictor.method, examples, predictor.task.targets(examples), progress=not args.quiet)
    return {"input": str(args.input), "examples": len(examples), **metrics}


def cmd_predict(args) -> int:
    from .api import load_run
    from .data import Columns, read_examples

    if args.output:
        _check_output_folder(args.output, "--output")
        if Path(args.output).exists():
            raise UserError(f"--output {args.output} already exists; choose another file")
    predictor = load_run(args.run, dtype=args.dtype)
    columns = Columns(args.text_field, args.pair_field, args.label_field)
    examples = read_examples(args.input, columns, require_label=False)
    rows = predictor.predict(examples, progress=True)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.output:
        from .runs import atomic_write_text

        atomic_write_text(Path(args.output), lines)
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


def _check_output_folder(path: str, option: str) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: folder {folder} does not exist")
    if Path(path).is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")


def cmd_models(args) -> int:
    from .backbones import describe_packaged

    print(f"{'name':<14} {'kind':<8} {'installed':<10} {'converted':<10} about")
    for row in describe_packaged():
        converted = "-" if row["converted"] is None else ("yes" if row["converted"] else "no")
        print(f"{row['name']:<14} {row['kind']:<8} {'yes' if row['installed'] else 'no':<10} {converted:<10} {row['about']}")
        if not row["installed"]:
            print(f"{'':<14} install: {row['install']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(model=args.model, out=args.out, quick=args.quick)
    return 0


def _print_summary(metrics: dict, folder) -> None:
    if "prompt" in metrics:  # chosen by the prompt search (every candidate's score: prompt_search.json)
        prompt = metrics["prompt"]
        print(f"prompt search chose: pattern {' + '.join(repr(p) for p in prompt['patterns'])}  "
              f"words {prompt['verbalizer']}  calibrate {prompt['calibrate']}")
    for split in ("dev", "test"):
        if split in metrics:
            values = "  ".join(f"{k} {v:.4f}" for k, v in metrics[split].items() if k != "examples")
            print(f"{split:<5} {values}")
    print(f"trainable parameters {metrics['trainable_parameters']:,}  train time {metrics['train']['seconds']:.1f} s")
    if folder is not None:
        print(f"run folder {folder}")


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "models": cmd_models,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "probe": cmd_probe,
}


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns its exit code (a usage mistake's, --help's and --version's too)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse has printed the help, the version or the one-line mistake
        return done.code if isinstance(done.code, int) else 0
    quiet_libraries()
    return answer(lambda: COMMANDS[args.command](args), args.command, _run_folder(args))


def _run_folder(args) -> Path | None:
    """The run folder a command writes (whose log gets an internal error's traceback)."""
    folder = (args.resume or args.out) if args.command == "train" else None
    return Path(folder) if folder else None


if __name__ == "__main__":
    sys.exit(main())
