"""The `pretune probe` subcommand: its arguments and what it prints (cli.py only registers it)."""

from __future__ import annotations

import sys

from ..errors import UserError


def add_probe_parser(commands) -> None:
    probe = commands.add_parser(
        "probe", help="knowledge probing (LAMA T-REx): frozen model, P@1 over the whole vocabulary per relation"
    )
    probe.add_argument("--data", required=True, metavar="DIR", help="folder of relation folders (P19/train.jsonl, dev, test)")
    probe.add_argument("--model", required=True, help="packaged name, folder, .gguf file or hub id")
    probe.add_argument("--method", default="pet", choices=("pet", "ptuning", "deep-prompt"),
                       help="pet: the manual prompt, untrained; ptuning, deep-prompt: a trained prompt")
    probe.add_argument("--encoder", default="lstm", choices=("lstm", "mlp", "none"), help="ptuning: prompt encoder")
    probe.add_argument("--relations", help="relations to probe, comma-separated (default: every folder)")
    probe.add_argument("--out", required=True, metavar="DIR", help="results folder (a rerun skips the relations already done)")
    probe.add_argument("--variants", action="store_true",
                       help="ask each relation that has several manual wordings once per wording (the spread across prompts)")
    probe.add_argument("--multi-token", default="drop", choices=("drop", "error"),
                       help="objects that are not one token: drop them (LAMA's convention, counted) or refuse the first")
    probe.add_argument("--init", default="random", choices=("random", "manual"),
                       help="ptuning: random ([P*N] {text} [P*N] {mask}) or manual (soft tokens start as the manual prompt's words)")
    probe.add_argument("--soft-tokens", type=int, default=3, help="ptuning: soft tokens per group of [P*N] {text} [P*N] {mask}")
    probe.add_argument("--prompt-length", type=int, default=16, help="deep-prompt: prefix vectors at every layer")
    probe.add_argument("--epochs", type=int, default=10, help="most passes over a relation's train facts")
    probe.add_argument("--patience", type=int, default=2, help="stop after this many epochs without a better dev P@1")
    probe.add_argument("--batch-size", type=int, default=16, help="facts per optimizer step")
    probe.add_argument("--eval-batch-size", type=int, default=64, help="facts per evaluation batch")
    probe.add_argument("--lr", type=float, help="the prompt's learning rate (default: by encoder)")
    probe.add_argument("--max-train", type=int, help="use at most this many train facts per relation")
    probe.add_argument("--max-eval", type=int, help="evaluate on at most this many dev and test facts per relation (seeded sample)")
    probe.add_argument("--seed", type=int, default=13, help="seeds the prompt's start, the batches and the --max-eval sample")
    probe.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_probe(args) -> int:
    from .runner import ProbeConfig, run_probe  # torch and transformers load only when a probe runs
    from .training import TrainSettings

    relations = [r.strip() for r in args.relations.split(",") if r.strip()] if args.relations else None
    if relations == []:
        raise UserError("--relations is empty")
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                             lr=args.lr, patience=args.patience, max_train=args.max_train, seed=args.seed)
    config = ProbeConfig(data=args.data, model=args.model, method=args.method, out=args.out, encoder=args.encoder,
                         relations=relations, soft_tokens=args.soft_tokens, init=args.init, prefix_length=args.prompt_length,
                         variants=args.variants, multi_token=args.multi_token, max_eval=args.max_eval,
                         settings=settings)
    summary = run_probe(config, progress=not args.quiet)
    macro = summary["macro_p_at_1"]
    print(f"macro P@1 {'–' if macro is None else f'{macro:.1f}'} over {summary['relations_with_test']} relations "
          f"with a test set ({summary['test_facts_kept']} of {summary['test_facts_total']} test facts single-token); "
          f"results in {args.out}/results.md", file=sys.stdout)
    return 0
