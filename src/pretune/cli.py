"""The `pretune` command: train | eval | predict | models | demo | bench | probe.

Every mistake the user can fix ends as one line on stderr and exit code 2, never a traceback; an
error of pretune's own ends as one line naming the log that holds the traceback, and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bench.command import add_bench_parser, cmd_bench
from .console import quiet_libraries
from .errors import UserError, answer
from .probe.command import add_probe_parser, cmd_probe

DTYPE_HELP = ("number format of the forward passes: auto | float32 | bfloat16 | float16 (auto: bfloat16 where "
              "the GPU or CPU computes it natively, else float32)")

# Method options: (flag, config field, type, help). Only the options a user gives reach the
# method's config, and a method refuses options it does not have. Type `list`: the flag may be
# repeated; type `bool`: a switch.
METHOD_OPTIONS = [
    ("--head", "head", str, "head, and the prompt methods with --readout head: linear | mlp"),
    ("--hidden", "hidden", int, "head: hidden width of the MLP head"),
    ("--dropout", "dropout", float, "head: dropout before the head"),
    ("--pooling", "pooling", str, "head: auto | cls | last | mean"),
    ("--max-length", "max_length", int, "longest input in tokens (longer inputs are truncated)"),
    ("--pattern", "patterns", list, "pet: cloze pattern, e.g. '{text} It was {mask}.'; repeat it for an ensemble. "
     "ptuning: a template with soft tokens [P], [P*4], [P:word], e.g. '[P*4]{text} It was {mask}.'"),
    ("--verbalizer", "verbalizer", str, "pet: label words, e.g. 'positive=great,good negative=bad,awful'"),
    ("--aggregate", "aggregate", str, "pet: how a label's words combine: logsumexp | mean | max"),
    ("--calibrate", "calibrate", bool, "pet: contextual calibration by content-free inputs (Zhao et al. 2021)"),
    ("--unlabelled", "unlabelled", str, "pet: data file of unlabelled texts (auxiliary LM loss, distillation)"),
    ("--aux-lm-weight", "aux_lm_weight", float, "pet: weight of the auxiliary LM loss on unlabelled text (PET: 1e-4)"),
    ("--ensemble-weighting", "ensemble_weighting", str, "pet: uniform | dev (members weighted by accuracy before training)"),
    ("--distil", "distil", bool, "pet: distil the pattern ensemble into one model on the --unlabelled texts"),
    ("--distil-temperature", "distil_temperature", float, "pet: softens the ensemble's soft labels (PET: 2)"),
    ("--encoder", "encoder", str, "ptuning: prompt encoder of the soft tokens: lstm | mlp | none (the embeddings train)"),
    ("--prompt-length", "prompt_length", int,
     "ptuning, prompt-tuning: soft tokens put in front of the pattern; deep-prompt: prefix vectors at every layer (16)"),
    ("--reparam", "reparam", bool, "deep-prompt: train the prefixes through an MLP (materialised after training)"),
    ("--readout", "readout", str, "ptuning, prompt-tuning, deep-prompt: label scores from the verbalizer's words, or a head: verbalizer | head"),
]


# Each method's default learning rates, as --help shows them (see methods.cloze and methods.head).
RATE_DEFAULTS = {
    "lr": "head 1e-3; ptuning 3e-4 (1e-2 with --encoder none); prompt-tuning 1e-2; deep-prompt 1e-3; "
          "pet adds no parameters of its own (--lr is refused)",
    "body_lr": "head 2e-5; the cloze methods 1e-5 (5e-4 with --train lora, 1e-3 with --train bitfit)",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, where to look) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pretune", description="Tune pretrained language models to small tasks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser("train", help="train a method on a task and write a run folder")
    _add_run_arguments(train, task_required=False)  # --resume DIR needs no --task
    train.add_argument("--out", help="run folder to create")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument(
        "--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint, with its own options"
    )
    train.add_argument(
        "--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (default: at an evaluation every 10 minutes; 0: at the end)"
    )

    evaluate = commands.add_parser("eval", help="evaluate a trained run, or a method as it is (zero-shot)")
    evaluate.add_argument("--run", help="a completed run folder (then --input is a labelled data file)")
    evaluate.add_argument("--input", help="labelled data file to evaluate a run on")
    _add_run_arguments(evaluate, task_required=False)
    evaluate.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="label new data with a trained run")
    predict.add_argument("--run", required=True, help="a completed run folder")
    predict.add_argument("--input", required=True, help="data file (.jsonl, .csv, .tsv); labels not needed")
    predict.add_argument("--output", help="write predictions here (JSON lines) instead of stdout")
    predict.add_argument("--dtype", help=DTYPE_HELP + "; default: the run's own")
    _add_column_arguments(predict)

    commands.add_parser("models", help="list the packaged models and whether they are installed")

    add_bench_parser(commands, _add_column_arguments)
    add_probe_parser(commands)

    demo = commands.add_parser("demo", help="the main job in small: few-shot SST-2 on the default model")
    demo.add_argument("--model", default=None, help="model (default: smollm2-135m)")
    demo.add_argument("--out", default="runs/demo", help="where the demo's run folders go")
    demo.add_argument("--quick", action="store_true", help="the packaged example set and a few steps per arm (for tests)")
    return parser


def _add_column_arguments(parser) -> None:
    parser.add_argument("--text-field", default="text", help="column holding the text")
    parser.add_argument("--pair-field", default="text_pair", help="column holding the second text (pair tasks)")
    parser.add_argument("--label-field", default="label", help="column holding the label")


def _add_run_arguments(parser, task_required: bool = True) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--task", required=task_required, help="task folder, data file, or benchmark task name (sst-2)")
    data.add_argument("--split-seed", type=int, help="which K-<seed> split of a few-shot task folder")
    data.add_argument("--shots", type=int, help="sample K examples per class for train and dev (LM-BFF)")
    _add_column_arguments(data)

    model = parser.add_argument_group("model and method")
    model.add_argument("--model", default="smollm2-135m", help="packaged name, folder, .gguf file or hub id")
    model.add_argument("--method", default="head", help="head | pet | ptuning | prompt-tuning | deep-prompt")
    model.add_argument("--train", dest="body", help="which body parameters train: frozen | full | bitfit | lora | last:N")
    model.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    model.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha")
    for flag, dest, kind, text in METHOD_OPTIONS:
        _add_method_option(model, flag, f"opt_{dest}", kind, text)

    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, help="optimizer steps (default: --epochs)")
    training.add_argument("--epochs", type=float, default=10.0, help="epochs when --steps is not given")
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--eval-batch-size", type=int, default=32)
    training.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    training.add_argument("--lr", type=float, help="learning rate of the method's own parameters (head, prompt); "
                          "default: " + RATE_DEFAULTS["lr"])
    training.add_argument("--body-lr", type=float, help="learning rate of the trainable body parameters; "
                          "default: " + RATE_DEFAULTS["body_lr"])
    training.add_argument("--weight-decay", type=float, default=0.01,
                          help="AdamW weight decay of every method's parameters, except the body's biases and norms")
    training.add_argument("--warmup-ratio", type=float, default=0.06)
    training.add_argument("--max-grad-norm", type=float, default=1.0)
    training.add_argument("--eval-every", type=int, help="steps between dev evaluations (default: each epoch)")
    training.add_argument("--patience", type=int, help="stop after this many evaluations without improvement")
    training.add_argument("--eval-start", choices=("auto", "yes", "no"), default="auto",
                          help="evaluate the untrained state on dev (step 0) and keep it if training never beats it "
                          "(auto: where the method's start is a usable model, as PET's pattern is)")
    training.add_argument("--seed", type=int, default=42)
    training.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    training.add_argument("--dtype", help=DTYPE_HELP + " (default auto; eval --run: the run's own)")
    training.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_method_option(group, flag: str, dest: str, kind, text: str) -> None:
    # Unset options stay None, so that only what the user gives reaches the method's config.
    if kind is bool:
        group.add_argument(flag, dest=dest, action="store_const", const=True, help=text)
    elif kind is list:
        group.add_argument(flag, dest=dest, action="append", help=text)
    else:
        group.add_argument(flag, dest=dest, type=kind, help=text)


def run_config_from_args(args):
    from .api import RunConfig
    from .training.trainer import TrainConfig

    options = {dest: getattr(args, f"opt_{dest}") for _, dest, _, _ in METHOD_OPTIONS}
    options = {k: v for k, v in options.items() if v is not None}
    training = TrainConfig(
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        body_lr=args.body_lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every,
        patience=args.patience,
        eval_start={"auto": None, "yes": True, "no": False}[getattr(args, "eval_start", "auto")],
        seed=args.seed,
        device=args.device,
        checkpoint_every=getattr(args, "checkpoint_every", None),
    )
    return RunConfig(
        task=args.task,
        model=args.model,
        method=args.method,
        method_options=options,
        train=args.body,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        split_seed=args.split_seed,
        shots=args.shots,
        text_field=args.text_field,
        pair_field=args.pair_field,
        label_field=args.label_field,
        dtype=args.dtype or "auto",
        training=training,
    )


# ---------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from .api import resume_run, train_run
    from .training.distributed import processes

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
RESUME_COMPANIONS = {"command", "resume", "out", "device", "quiet"}


def _refuse_options_beside_resume(args) -> None:
    train = _subparser(build_parser(), "train")
    defaults = vars(train.parse_args(["--resume", args.resume]))
    given = [name for name, value in vars(args).items() if name not in RESUME_COMPANIONS and value != defaults.get(name)]
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        given.append("out")
    if given:
        flags = {action.dest: action.option_strings[0] for action in train._actions if action.option_strings}
        named = ", ".join(flags.get(name, name) for name in sorted(given))
        raise UserError(f"--resume {args.resume} continues the run with the options in its config.yaml; drop {named}")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


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
    "models": cmd_models,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "probe": cmd_probe,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    return answer(lambda: COMMANDS[args.command](args), args.command, _run_folder(args))


def _run_folder(args) -> Path | None:
    """The run folder a command writes (whose log gets an internal error's traceback)."""
    folder = (args.resume or args.out) if args.command == "train" else None
    return Path(folder) if folder else None


if __name__ == "__main__":
    sys.exit(main())
