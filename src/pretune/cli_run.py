"""The options of a run on the command line (`pretune train` and `pretune eval`): what each one is,
and the RunConfig they make. The commands themselves are in cli.py."""

from __future__ import annotations

from typing import NamedTuple

from .errors import UserError
from .training.schedule import SCHEDULES

# The fixed sets of values and the methods' defaults, named here so that `--help` needs no torch
# (tests/test_cli_habits.py checks them against the library's own).
METHODS = ("head", "pet", "ptuning", "prompt-tuning", "deep-prompt")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_HELP = "number format of the forward passes (auto: bfloat16 where the GPU or CPU computes it natively, else float32)"


class MethodOption(NamedTuple):
    """A method's option. Only the options a user gives reach the method's config, and a method refuses
    options it does not have. Type `list`: the flag may be repeated; type `bool`: a switch."""

    flag: str
    dest: str  # the method config's field
    kind: type
    help: str
    choices: tuple | None = None
    default: object = None  # the method's default, as --help shows it (the option itself stays unset)
    metavar: str | None = None


METHOD_OPTIONS = [
    MethodOption("--head", "head", str, "head, and the prompt methods with --readout head", ("linear", "mlp"),
                 "linear"),
    MethodOption("--hidden", "hidden", int, "head: hidden width of the MLP head", default=256),
    MethodOption("--dropout", "dropout", float, "head: dropout before the head", default=0.1),
    MethodOption("--pooling", "pooling", str, "head: which hidden state (auto: last for a causal LM, else cls)",
                 ("auto", "cls", "last", "mean"), "auto"),
    MethodOption("--max-length", "max_length", int, "longest input in tokens (longer inputs are truncated)",
                 default=256),
    MethodOption("--pattern", "patterns", list, "pet: cloze pattern, e.g. '{text} It was {mask}.'; repeat it for an "
                 "ensemble. ptuning: a template with soft tokens [P], [P*4], [P:word], e.g. '[P*4]{text} It was {mask}.'"),
    MethodOption("--verbalizer", "verbalizer", str, "pet: label words, e.g. 'positive=great,good negative=bad,awful'",
                 metavar="WORDS"),
    MethodOption("--aggregate", "aggregate", str, "pet: how a label's words combine", ("logsumexp", "mean", "max"),
                 "logsumexp"),
    MethodOption("--scoring", "scoring", str, "pet, ptuning, prompt-tuning, deep-prompt on a causal LM: a label "
                 "by its word's probability after the text (direct), or by the text's after the word (channel, "
                 "Min et al. 2022; the pattern puts {mask} before the text)", ("direct", "channel"), "direct"),
    MethodOption("--label-tokens", "label_tokens", str, "pet, ptuning, prompt-tuning, deep-prompt: the label words' "
                 "output rows as the model has them (fixed), or trainable copies that train at --lr (learned, DART: "
                 "Zhang et al. 2022)", ("fixed", "learned"), "fixed"),
    MethodOption("--calibrate", "calibrate", bool, "pet: contextual calibration by content-free inputs (Zhao et al. 2021)"),
    MethodOption("--unlabelled", "unlabelled", str, "pet: data file of unlabelled texts (auxiliary LM loss, distillation)",
                 metavar="FILE"),
    MethodOption("--aux-lm-weight", "aux_lm_weight", float, "pet: weight of the auxiliary LM loss on unlabelled text (PET: 1e-4)",
                 default=0.0),
    MethodOption("--ensemble-weighting", "ensemble_weighting", str,
                 "pet: members weighted alike, or by their dev accuracy before training", ("uniform", "dev"), "dev"),
    MethodOption("--distil", "distil", bool, "pet: distil the pattern ensemble into one model on the --unlabelled texts"),
    MethodOption("--distil-temperature", "distil_temperature", float, "pet: softens the ensemble's soft labels",
                 default=2.0),
    MethodOption("--generations", "generations", int, "pet: iPET, generations of the pattern ensemble, each member "
                 "trained again on the labelled set plus --unlabelled texts the other patterns' models labelled "
                 "(1: PET's ensemble)", default=1),
    MethodOption("--generation-growth", "generation_growth", int, "pet with --generations: each generation's training "
                 "set is this many times the one before's", default=5),
    MethodOption("--encoder", "encoder", str, "ptuning: prompt encoder of the soft tokens (none: the embeddings train)",
                 ("lstm", "mlp", "none"), "lstm"),
    MethodOption("--prompt-length", "prompt_length", int, "ptuning, prompt-tuning: soft tokens put in front of the "
                 "pattern; deep-prompt: prefix vectors at every layer (16)"),
    MethodOption("--reparam", "reparam", bool, "deep-prompt: train the prefixes through an MLP (materialised after training)"),
    MethodOption("--readout", "readout", str, "ptuning, prompt-tuning, deep-prompt: label scores from the verbalizer's "
                 "words, or a head", ("verbalizer", "head"), "verbalizer"),
]


# Each method's default learning rates, as --help shows them (see methods.cloze and methods.head).
RATE_DEFAULTS = {
    "lr": "head 1e-3; ptuning 3e-4 (1e-2 with --encoder none); prompt-tuning 1e-2; deep-prompt 1e-3; "
          "pet adds no parameters of its own (--lr is refused), 1e-3 with --label-tokens learned",
    "body_lr": "head 2e-5; the cloze methods 1e-5 (5e-4 with --train lora, 1e-3 with --train bitfit)",
}



def add_column_arguments(parser) -> None:
    parser.add_argument("--text-field", default="text", metavar="COLUMN", help="column holding the text")
    parser.add_argument("--pair-field", default="text_pair", metavar="COLUMN", help="column holding the second text (pair tasks)")
    parser.add_argument("--label-field", default="label", metavar="COLUMN", help="column holding the label")


def add_run_arguments(parser, task_required: bool = True) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--task", required=task_required, help="task folder, data file, or benchmark task name (sst-2)")
    data.add_argument("--split-seed", type=int, help="which K-<seed> split of a few-shot task folder")
    data.add_argument("--shots", type=int, help="sample K examples per class for train and dev (LM-BFF)")
    add_column_arguments(data)

    model = parser.add_argument_group("model and method")
    model.add_argument("--model", default="smollm2-135m", help="packaged name, folder, .gguf file or hub id")
    model.add_argument("--method", default="head", choices=METHODS, help="the tuning method (see the README's table)")
    model.add_argument("--train", dest="body", metavar="WHICH",
                       help="which body parameters train: frozen | full | bitfit | lora | last:N (default: the method's)")
    model.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    model.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha")
    for option in METHOD_OPTIONS:
        _add_method_option(model, option)

    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, help="optimizer steps (default: --epochs)")
    training.add_argument("--epochs", type=float, default=10.0, help="epochs when --steps is not given")
    training.add_argument("--batch-size", type=int, default=8,
                          help="examples per micro-batch, all processes together (not per device)")
    training.add_argument("--eval-batch-size", type=int, default=32, help="examples per evaluation batch")
    training.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    training.add_argument("--lr", type=float, help="learning rate of the method's own parameters (head, prompt); "
                          "default: " + RATE_DEFAULTS["lr"])
    training.add_argument("--body-lr", type=float, help="learning rate of the trainable body parameters; "
                          "default: " + RATE_DEFAULTS["body_lr"])
    training.add_argument("--learning_rate", type=float, help="the Trainer's one rate for every trainable parameter: "
                          "--lr and --body-lr both (a method without parameters of its own takes it for the body)")
    training.add_argument("--weight-decay", type=float, default=0.01,
                          help="AdamW weight decay of every method's parameters, except the body's biases and norms")
    training.add_argument("--warmup-ratio", type=float, default=0.06,
                          help="part of the steps over which the rate rises linearly from 0")
    training.add_argument(
        "--lr-scheduler", dest="lr_scheduler", default="linear", choices=SCHEDULES,
        help="the rate after the warmup: linear (to 0), cosine (to 0) or constant",
    )
    training.add_argument("--max-grad-norm", type=float, default=1.0, help="gradients clipped to this norm")
    training.add_argument("--eval-every", type=int, help="optimizer steps between dev evaluations, and one at the last "
                          "step (default: a tenth of the steps, but never more often than once per epoch)")
    training.add_argument("--patience", type=int, help="stop after this many evaluations without improvement")
    training.add_argument("--eval-start", choices=("auto", "yes", "no"), default="auto",
                          help="evaluate the untrained state on dev (step 0) and keep it if training never beats it "
                          "(auto: where the method's start is a usable model, as PET's pattern is)")
    training.add_argument("--seed", type=int, default=42, help="seeds the new parameters, the batches and dropout")
    training.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    training.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP + " (default auto; eval --run: the run's own)")
    training.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_method_option(group, option: MethodOption) -> None:
    # Unset options stay None, so that only what the user gives reaches the method's config.
    dest = f"opt_{option.dest}"
    text = option.help if option.default is None else f"{option.help} (default: {option.default})"
    if option.kind is bool:
        group.add_argument(option.flag, dest=dest, action="store_const", const=True, help=text)
    elif option.kind is list:
        group.add_argument(option.flag, dest=dest, action="append", metavar=option.metavar, help=text)
    else:
        group.add_argument(option.flag, dest=dest, type=option.kind, choices=option.choices, metavar=option.metavar,
                           help=text)


def run_config_from_args(args):
    from .api import RunConfig
    from .training.trainer import TrainConfig

    options = {option.dest: getattr(args, f"opt_{option.dest}") for option in METHOD_OPTIONS}
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
        lr_scheduler=args.lr_scheduler,
        report_to=getattr(args, "report_to", "none"),
    )
    config = RunConfig(
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
    if args.learning_rate is not None:
        _one_rate(config, args.learning_rate, args)
    return config


def _one_rate(config, rate: float, args) -> None:
    """`--learning_rate` as the Trainer means it: the rate of every parameter that trains."""
    from .methods import make_config

    if args.lr is not None or args.body_lr is not None:
        raise UserError("--learning_rate sets every trainable parameter's rate: give it, or --lr and --body-lr, not both")
    own = make_config(config.method, dict(config.method_options)).default_rates(config.body_training()).own
    config.training.lr = rate if own is not None else None  # pet adds no parameters of its own
    config.training.body_lr = rate
