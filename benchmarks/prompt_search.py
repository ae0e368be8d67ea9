"""The automatic prompt against the built-in one, zero-shot, on the shared few-shot tasks.

    python benchmarks/prompt_search.py [--model smollm2-135m] [--tasks sst-2 trec rte mr subj]
                                       [--split-seed 42] [--max-test 500] [--threads 2]

For each task (LM-BFF split K=16, seed `--split-seed`): the prompt search (`--pattern auto`)
chooses patterns, words and calibration from the split's train + dev examples only (its criterion:
log-loss of the true label); then the chosen prompt and the task's first built-in prompt are
evaluated zero-shot on the same fixed random sample of at most `--max-test` test examples (seed 0;
the whole test set when it is smaller). Also records what a search costs (seconds, CPU, load).

Writes results/prompt_search.json (kept across runs: a task already there is skipped) and
results/prompt_search.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import torch

from pretune.backbones import load_backbone
from pretune.data import load_task
from pretune.methods import build_method, build_methods, make_config
from pretune.methods.autoprompt import searched
from pretune.training.evaluation import evaluate
from pretune.training.recipes import tuned
from pretune.tuning import BodyTraining

DATA = Path(os.environ.get("PRETUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "fewshot"
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def test_sample(examples: list, limit: int) -> list:
    if len(examples) <= limit:
        return examples
    return sorted(random.Random(0).sample(examples, limit), key=examples.index)


def run_task(backbone, name: str, split_seed: int, max_test: int) -> dict:
    task = load_task(DATA / name, split_seed=split_seed)
    test = test_sample(task.test, max_test)
    frozen = BodyTraining.parse("frozen")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    chosen, search = searched(make_config("pet", {"patterns": ["auto"]}, task), task, backbone)
    search_seconds = time.perf_counter() - start
    auto = tuned(build_methods("pet", backbone, task, chosen, frozen))
    built_in = build_method("pet", backbone, task, {}, frozen)
    targets = task.targets(test)
    auto_metrics, _ = evaluate(auto, test, targets, progress=True)
    built_metrics, _ = evaluate(built_in, test, targets, progress=True)
    reference = next((c for c in search.candidates if c.pattern == built_in.prompt.pattern.source
                      and c.words == str(built_in.prompt.verbalizer) and not c.calibrate and not c.members), None)
    return {
        "task": name, "split_seed": split_seed, "metric": task.metric,
        "test_examples": len(test), "test_total": len(task.test), "search_examples": search.examples,
        "auto": {"patterns": chosen.patterns, "verbalizer": chosen.verbalizer, "calibrate": chosen.calibrate,
                 "criterion": min(c.log_loss for c in search.candidates), "why": search.reason, **auto_metrics},
        "built_in": {"pattern": built_in.prompt.pattern.source, "verbalizer": str(built_in.prompt.verbalizer),
                     "criterion": reference.log_loss if reference else None, **built_metrics},
        "search_seconds": search_seconds, "candidates": len(search.candidates),
        "best_candidates": [c.__dict__ for c in sorted(search.candidates, key=lambda c: c.log_loss)[:8]],
        "load_average": [load_before, os.getloadavg()[0]],
    }


def write_markdown(results: dict, path: Path) -> None:
    rows = results["tasks"]
    info = results["machine"]
    lines = [
        "# Automatic prompt vs built-in prompt, zero-shot",
        "",
        f"Model {results['model']}; LM-BFF few-shot splits (K=16 per class), split seed {results['split_seed']}. "
        "The search (`--pattern auto`) sees only the split's train + dev examples and picks by log-loss of the "
        f"true label; test accuracy on a fixed random sample of at most {results['max_test']} test examples "
        "(seed 0; the whole test set when smaller). Produced by `benchmarks/prompt_search.py`.",
        "",
        f"Machine: {info['cpu']} (AMX {info['amx']}, AVX512-BF16 {info['avx512_bf16']}), {info['threads']} torch "
        f"threads, torch {info['torch']}; load average during each search in the last column (the machine is shared).",
        "",
        "| task | test n | built-in acc | auto acc | auto - built-in | auto prompt | words | calibrate | "
        "log-loss built-in / auto | search s (load) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        auto, built = r["auto"], r["built_in"]
        delta = 100 * (auto["accuracy"] - built["accuracy"])
        patterns = " + ".join(f"`{p!r}`" for p in auto["patterns"])
        criterion = f"{built['criterion']:.3f} / {auto['criterion']:.3f}" if built["criterion"] is not None else \
            f"- / {auto['criterion']:.3f}"
        lines.append(
            f"| {r['task']} | {r['test_examples']} of {r['test_total']} | {100 * built['accuracy']:.1f} | "
            f"{100 * auto['accuracy']:.1f} | {delta:+.1f} | {patterns} | {auto['verbalizer']} | {auto['calibrate']} | "
            f"{criterion} | {r['search_seconds']:.0f} ({r['load_average'][0]:.1f}) |"
        )
    within = [r["task"] for r in rows if r["auto"]["accuracy"] >= r["built_in"]["accuracy"] - 0.01]
    missed = [r["task"] for r in rows if r["task"] not in within]
    lines += ["", f"Target (auto within 1 point of the built-in prompt, or better): met on {', '.join(within) or 'none'}"
              + (f"; not met on {', '.join(missed)}." if missed else ".")]
    lines += [f"\n{note}" for note in results.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=["sst-2", "trec", "rte", "mr", "subj"])
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "prompt_search"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report (kept in the JSON)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.report_only or args.note:
        results["notes"] = results.get("notes", []) + args.note
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out.with_suffix(".md"))
        return
    if results.get("model") != args.model or results.get("max_test") != args.max_test:
        results = {"model": args.model, "split_seed": args.split_seed, "max_test": args.max_test, "tasks": []}
    results["machine"] = machine()
    backbone = load_backbone(args.model)
    for name in args.tasks:
        if any(r["task"] == name and r["split_seed"] == args.split_seed for r in results["tasks"]):
            continue
        row = run_task(backbone, name, args.split_seed, args.max_test)
        print(json.dumps({k: row[k] for k in ("task", "auto", "built_in", "search_seconds")}, indent=1), flush=True)
        results["tasks"].append(row)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
