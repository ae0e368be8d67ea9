"""Training and evaluation speed and peak memory: pretune's methods against the transformers/PEFT
arm a user would otherwise pick, measured in one run on the same model, data and batch size.

    python benchmarks/speed_memory.py [--model smollm2-135m] [--steps 40] [--test 256] [--threads 2]

Data: few-shot SST-2 split 16-42 (32 training sentences, no dev set: nothing but training is timed)
and the first N test sentences for evaluation speed. Every arm trains for the same number of steps
at batch size 8 (pretune's head too, although on cached features it could afford far more) and runs
in its own process (the benchmark harness's worker), so its peak RSS is its own.

Pairs (pretune / baseline): head with cached features vs full fine-tuning and vs a frozen-body HF
head that re-encodes every batch; PET vs full fine-tuning; P-tuning vs PEFT P_TUNING; prompt
tuning vs PEFT PROMPT_TUNING. Prints the table with ratios and writes
benchmarks/results/speed_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pretune.bench.arms import ARMS, RunSpec
from pretune.bench.harness import run_in_worker
from pretune.data import find_benchmark_task

RESULTS = Path(__file__).parent / "results"
PAIRS = [
    ("head (cached) vs full fine-tuning", "head", "hf-full"),
    ("head (cached) vs frozen-body HF head (no cache)", "head", "hf-frozen"),
    ("PET vs full fine-tuning", "pet", "hf-full"),
    ("P-tuning vs PEFT P_TUNING", "ptuning", "peft-ptuning"),
    ("prompt tuning vs PEFT PROMPT_TUNING", "prompt-tuning", "peft-prompt"),
]


def speed_task(folder: Path, test_size: int) -> Path:
    """A scratch task folder: SST-2's 16-42 training split, no dev, the first `test_size` test sentences."""
    source = find_benchmark_task("fewshot/sst-2")
    if source is None:
        raise SystemExit("the benchmark data (../shared/data/fewshot/sst-2) is not on this machine")
    folder.mkdir(parents=True)
    shutil.copy(source / "task.json", folder / "task.json")
    shutil.copy(source / "16-42" / "train.jsonl", folder / "train.jsonl")
    lines = (source / "test.jsonl").read_text().splitlines()[:test_size]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def measure(arm: str, spec: RunSpec, threads: int, scratch: Path) -> dict:
    options = dict(ARMS[arm].options)
    if "training" in options:  # the shared step budget, not the arm's own (head: 100 epochs)
        options["training"] = {k: v for k, v in options["training"].items() if k not in ("steps", "epochs")}
    measured, error = run_in_worker(arm, spec, scratch / f"{arm}.log", threads, options)
    if measured is None:
        raise SystemExit(f"{arm} failed: {error} (log: {scratch / f'{arm}.log'})")
    keys = ("train_seconds", "train_examples_per_second", "eval_examples_per_second", "peak_rss_mib",
            "trainable_parameters", "loadavg_before", "loadavg_after", "torch_threads")
    return {key: measured[key] for key in keys}


def load_note(results: dict, threads: int) -> str:
    """Whether other work shared the machine: a load average above the run's own threads."""
    busiest = max(max(r["loadavg_before"][0], r["loadavg_after"][0]) for r in results.values())
    if busiest > threads + 0.5:
        return (f"the 1-minute load average reached {busiest:.1f} on {os.cpu_count()} CPUs with {threads} torch "
                "thread(s) per run: other work shared the machine, so absolute timings are inflated; ratios are "
                "less affected but not immune")
    return (f"the 1-minute load average stayed at or below {busiest:.1f} on {os.cpu_count()} CPUs with {threads} "
            "torch thread(s) per run: the runs' own load, no other heavy work")


def ratio_rows(results: dict) -> list[dict]:
    rows = []
    for label, ours, theirs in PAIRS:
        if ours not in results or theirs not in results:
            continue
        a, b = results[ours], results[theirs]
        rows.append({
            "pair": label, "pretune": ours, "baseline": theirs,
            "train_speedup": a["train_examples_per_second"] / b["train_examples_per_second"],
            "eval_speedup": a["eval_examples_per_second"] / b["eval_examples_per_second"],
            "peak_rss_ratio": a["peak_rss_mib"] / b["peak_rss_mib"],
        })
    return rows


def markdown(meta: dict, results: dict, rows: list[dict], notes: list[str]) -> str:
    lines = [
        "# Speed and memory: pretune vs transformers/PEFT",
        "",
        f"Model {meta['model']}; few-shot SST-2 16-42 (32 sentences), {meta['steps']} steps x batch 8; evaluation on "
        f"{meta['test_examples']} test sentences (batch 32); {meta['threads']} torch threads; each arm in its own process. "
        f"Measured {meta['date']} on {meta['cpus']} CPUs by `python benchmarks/speed_memory.py`.",
        "",
        "| arm | trainable params | train s | train ex/s | eval ex/s | peak RSS MiB | load avg (before, after) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        lines.append(
            f"| {arm} | {r['trainable_parameters']:,} | {r['train_seconds']:.1f} | {r['train_examples_per_second']:.1f} "
            f"| {r['eval_examples_per_second']:.1f} | {r['peak_rss_mib']:.0f} "
            f"| {r['loadavg_before'][0]:.1f}, {r['loadavg_after'][0]:.1f} |"
        )
    lines += ["", "| pair (pretune / baseline) | training ex/s | evaluation ex/s | peak RSS |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['pair']} | {row['train_speedup']:.2f}x | {row['eval_speedup']:.2f}x "
                     f"| {row['peak_rss_ratio']:.2f}x |")
    lines += [""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=40, help="training steps of every arm (batch 8)")
    parser.add_argument("--test", type=int, default=256, help="test sentences timed for evaluation speed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "speed_memory"), help="output path without suffix")
    args = parser.parse_args()

    wanted = list(dict.fromkeys(arm for _, ours, theirs in PAIRS for arm in (ours, theirs)))
    notes = [f"{arm} skipped: {ARMS[arm].unavailable_reason()}" for arm in wanted if ARMS[arm].unavailable_reason()]
    runnable = [arm for arm in wanted if not ARMS[arm].unavailable_reason()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="pretune-speed-") as scratch:
        task = speed_task(Path(scratch) / "sst-2", args.test)
        spec = RunSpec(task=str(task), model=args.model, seed=42, steps=args.steps, batch_size=8, eval_batch_size=32)
        for arm in runnable:
            results[arm] = measure(arm, spec, args.threads, Path(scratch))
            print(f"{arm:<13} train {results[arm]['train_examples_per_second']:7.1f} ex/s   "
                  f"eval {results[arm]['eval_examples_per_second']:7.1f} ex/s   peak {results[arm]['peak_rss_mib']:6.0f} MiB")
    notes.append(load_note(results, args.threads))
    meta = {"model": args.model, "steps": args.steps, "test_examples": args.test, "threads": args.threads,
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = ratio_rows(results)
    text = markdown(meta, results, rows, notes)
    print()
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({**meta, "arms": results, "ratios": rows, "notes": notes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
