"""The `pretune export` command: a completed run in PEFT, transformers or pretune's prompt format."""

from __future__ import annotations

FORMAT_HELP = ("peft: a LoRA run as a PEFT adapter | transformers: a run whose body trained, as a model folder | "
               "prompt: a P-tuning, prompt-tuning or deep-prompt run's trained prompt")


def add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="write a completed run for PEFT or transformers to load")
    export.add_argument("run", metavar="RUN", help="a completed run folder")
    export.add_argument("--format", required=True, choices=("peft", "transformers", "prompt"), help=FORMAT_HELP)
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, or empty)")
    export.add_argument("--force", action="store_true", help="replace an earlier export in --out")


def cmd_export(args) -> int:
    from .formats import export_run

    folder = export_run(args.run, args.format, args.out, force=args.force)
    print(f"wrote a {args.format} export of {args.run} to {folder}")
    return 0
