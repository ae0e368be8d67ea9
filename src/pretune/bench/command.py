"""The `pretune bench` command: its arguments, and the benchmark it runs (see `harness`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")  # precision.DTYPES, without importing torch for --help


def add_bench_parser(commands, add_column_arguments) -> None:
    bench = commands.add_parser(
        "bench", help="few-shot benchmark (LM-BFF protocol): every arm x seed on tasks, with baselines; tables and plots"
    )
    bench.add_argument("--task", help="task(s), comma-separated: benchmark names (sst-2), task folders or data files")
    bench.add_argument("--model", default="smollm2-135m", help="packaged name, folder, .gguf file or hub id")
    bench.add_argument("--methods", help="arms to run, comma-separated (default: every arm; see --list-arms)")
    bench.add_argument("--seeds", default="13,21,42,87,100", help="seeds: split K-<seed> and training seed")
    bench.add_argument("--shots", type=int, help="sample K examples per class per seed (datasets without splits)")
    bench.add_argument("--steps", type=int, default=100, help="optimizer steps of every trained arm")
    bench.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    bench.add_argument("--eval-batch-size", type=int, default=32, help="examples per evaluation batch")
    bench.add_argument("--threads", type=int, help="torch threads in each run (default: torch's own choice)")
    bench.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    bench.add_argument("--dtype", default="auto", choices=DTYPES, help="number format (auto: bfloat16 where the "
                       "hardware computes it natively); part of each run's key")
    bench.add_argument("--test-sample", type=int, metavar="N", help="evaluate on a fixed random sample of N test examples "
                       "where the test set is larger (the same sample for every arm and seed); part of each run's key")
    bench.add_argument("--out", metavar="DIR", help="results folder (an earlier benchmark's folder continues where it stopped)")
    bench.add_argument("--list-arms", action="store_true", help="list the arms and whether they can run here")
    bench.add_argument("--report-only", action="store_true", help="rewrite the report from --out's results; run nothing")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    add_column_arguments(bench)


def cmd_bench(args) -> int:
    from .arms import ARMS
    from .harness import BenchConfig, run_bench

    if args.list_arms:
        for name, arm in ARMS.items():
            reason = arm.unavailable_reason()
            print(f"{name:<14} {arm.family:<13} {'not available: ' + reason if reason else arm.about}")
        return 0
    if not args.task or not args.out:
        raise UserError("bench needs --task and --out (or --list-arms)")
    config = BenchConfig(
        tasks=_comma_list(args.task, "--task"),
        out=Path(args.out),
        model=args.model,
        arms=_comma_list(args.methods, "--methods") if args.methods else list(ARMS),
        seeds=[_integer(seed, "--seeds") for seed in _comma_list(args.seeds, "--seeds")],
        steps=args.steps,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        shots=args.shots,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        jobs=args.jobs,
        text_field=args.text_field,
        pair_field=args.pair_field,
        label_field=args.label_field,
        test_sample=args.test_sample,
        progress=not args.quiet,
        report_only=args.report_only,
    )
    outcome = run_bench(config)
    for name, reason in outcome.skipped_arms.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(f"{outcome.ran} runs done, {outcome.reused} already in {outcome.folder}"
          + (f", {outcome.missing} missing" if outcome.missing else "") + f"; report: {outcome.folder / 'report.md'}")
    if outcome.failed:
        print(f"pretune: {len(outcome.failed)} runs failed (logs in {outcome.folder / 'logs'}); "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _comma_list(value: str, flag: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise UserError(f"{flag} is empty")
    return items


def _integer(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{flag}: '{value}' is not a whole number") from None
