"""The automatic prompt against the built-in one, zero-shot, on the shared few-shot tasks.

    python benchmarks/prompt_search.py [--model smollm2-135m] [--tasks sst-2 trec ...]
                                       [--split-seeds 13 42 100] [--max-test 1000] [--dtype auto]
                                       [--threads 2] [--report-only]

For each task and LM-BFF split (K=16 per class, seed in `--split-seeds`): the prompt search
(`--pattern auto`) chooses patterns, words and calibration from the split's train + dev examples
only (its criterion: log-loss of the true label); then the chosen prompt and the task's first
built-in prompt are evaluated zero-shot on the same fixed random sample of at most `--max-test`
test examples (the run option `--test-sample`: seed 0, the whole test set when smaller). Both go
through what `pretune eval` does (the run's number format included: `--dtype auto` computes in
bfloat16 on a CPU that does so natively, the search too). Records what a search costs.

Writes results/prompt_search.json (kept across runs: a (task, split) already there is skipped; a
change of model, test sample or dtype starts a new table) and results/prompt_search.md, whose
target column compares the means over the splits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

from pretune.api import RunConfig
from pretune.backbones import load_backbone
from pretune.cloze.lm import language_model
from pretune.cloze.prompt import built_in_prompts
from pretune.run_config import build_method, prepare_task, search_prompt, validate
from pretune.training.evaluation import evaluate
from pretune.training.trainer import TrainConfig

DATA = Path(os.environ.get("PRETUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "fewshot"
RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ["sst-2", "sst-5", "mr", "subj", "trec", "cola", "mrpc", "qnli", "rte"]  # sts-b: a regression, no labels to search


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def zero_shot(config: RunConfig, backbone) -> tuple[dict, object, float]:
    """What `pretune eval` computes for `config` (test metrics), the search's result if it searched, its seconds."""
    task = prepare_task(config)
    method_config, _ = validate(config, task)
    start = time.perf_counter()
    config, backbone, search = search_prompt(config, task, method_config, backbone, progress=True)
    search_seconds = time.perf_counter() - start
    method = build_method(config, task, backbone)
    method.finalize()
    metrics, _ = evaluate(method, task.test, task.targets(task.test), config.training.eval_batch_size, progress=True)
    return {**metrics, "examples": len(task.test), "dtype": config.precision().name}, search, search_seconds


def run_task(backbone, args, name: str, split_seed: int) -> dict:
    def config(options: dict) -> RunConfig:
        return RunConfig(task=str(DATA / name), model=args.model, method="pet", method_options=options,
                         split_seed=split_seed, test_sample=args.max_test, dtype=args.dtype,
                         training=TrainConfig(seed=split_seed))

    load_before = os.getloadavg()[0]
    auto, search, search_seconds = zero_shot(config({"patterns": ["auto"]}), backbone)
    built_in, _, _ = zero_shot(config({}), backbone)
    task = prepare_task(config({}))
    test_total = len(prepare_task(replace(config({}), test_sample=None)).test)
    prompt = built_in_prompts(name, language_model(backbone).name)[0]
    words = str(prompt.verbalizer.for_labels(task.labels))
    reference = next((c for c in search.candidates if c.pattern == prompt.pattern.source and c.words == words
                      and not c.calibrate and not c.members), None)
    return {
        "task": name, "split_seed": split_seed, "test_examples": auto["examples"], "test_total": test_total,
        "search_examples": search.examples,
        "auto": {"patterns": search.patterns, "verbalizer": search.verbalizer, "calibrate": search.calibrate,
                 "criterion": min(c.log_loss for c in search.candidates), "why": search.reason, **auto},
        "built_in": {"pattern": prompt.pattern.source, "verbalizer": words, "criterion": reference.log_loss if reference else None, **built_in},
        "search_seconds": search_seconds, "candidates": len(search.candidates),
        "best_candidates": [c.__dict__ for c in sorted(search.candidates, key=lambda c: c.log_loss)[:8]],
        "load_average": [load_before, os.getloadavg()[0]],
    }


def by_task(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]) if r["task"] in TASKS else 99, r["split_seed"])):
        out.setdefault(r["task"], []).append(r)
    return out


def mean_accuracy(rows: list[dict], which: str) -> float:
    return 100 * statistics.mean(r[which]["accuracy"] for r in rows)


def write_markdown(results: dict, path: Path) -> None:
    info, tasks = results["machine"], by_task(results["tasks"])
    lines = [
        "# Automatic prompt vs built-in prompt, zero-shot",
        "",
        f"Model {results['model']}, computing in {results['dtype']} (`--dtype {results['dtype_option']}`); LM-BFF few-shot "
        "splits (K=16 per class). The search (`--pattern auto`) sees only the split's train + dev examples and picks by "
        "log-loss of the true label; both prompts are evaluated as `pretune eval` does on the same fixed random sample "
        f"of at most {results['max_test']} test examples (seed 0; the whole test set when smaller). Produced by "
        "`benchmarks/prompt_search.py`.",
        "",
        f"Machine: {info['cpu']} (AMX {info['amx']}, AVX512-BF16 {info['avx512_bf16']}), {info['threads']} torch "
        f"threads, torch {info['torch']}; the load average when each search started is in the last column (the machine "
        "is shared).",
        "",
        "## Per task (mean over the splits run)",
        "",
        "| task | splits | test n | built-in acc | auto acc | auto - built-in | per split |",
        "|---|---|---|---|---|---|---|",
    ]
    within, missed = [], []
    for task, rows in tasks.items():
        built, auto = mean_accuracy(rows, "built_in"), mean_accuracy(rows, "auto")
        (within if auto >= built - 1.0 else missed).append(task)
        per_split = ", ".join(f"{r['split_seed']}: {100 * (r['auto']['accuracy'] - r['built_in']['accuracy']):+.1f}"
                              for r in rows)
        lines.append(f"| {task} | {len(rows)} | {rows[0]['test_examples']} of {rows[0]['test_total']} | {built:.1f} | "
                     f"{auto:.1f} | {auto - built:+.1f} | {per_split} |")
    lines += ["", f"Target (auto within 1 point of the built-in prompt, or better, on the mean): met on "
              f"{', '.join(within) or 'none'}" + (f"; not met on {', '.join(missed)}." if missed else "."), ""]
    lines += [
        "## What the search chose",
        "",
        "| task | split | auto prompt | words | calibrate | log-loss built-in / auto | search s (load) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, rows in tasks.items():
        for r in rows:
            auto, built = r["auto"], r["built_in"]
            patterns = " + ".join(f"`{p!r}`" for p in auto["patterns"])
            criterion = "-" if built["criterion"] is None else f"{built['criterion']:.3f}"
            lines.append(f"| {task} | {r['split_seed']} | {patterns} | {auto['verbalizer']} | {auto['calibrate']} | "
                         f"{criterion} / {auto['criterion']:.3f} | {r['search_seconds']:.0f} ({r['load_average'][0]:.1f}) |")
    lines += [f"\n{note}" for note in results.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--split-seeds", nargs="+", type=int, default=[13, 42, 100])
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "prompt_search"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report (kept in the JSON)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.report_only or args.note:
        results["notes"] = results.get("notes", []) + args.note
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out.with_suffix(".md"))
        return
    protocol = {"model": args.model, "max_test": args.max_test, "dtype_option": args.dtype}
    if any(results.get(k) != v for k, v in protocol.items()):
        results = {**protocol, "tasks": []}
    results["machine"] = machine()
    backbone = load_backbone(args.model)
    for split_seed in args.split_seeds:  # splits outermost: after the first, every task has a figure
        for name in args.tasks:
            if any(r["task"] == name and r["split_seed"] == split_seed for r in results["tasks"]):
                continue
            row = run_task(backbone, args, name, split_seed)
            print(json.dumps({k: row[k] for k in ("task", "split_seed", "auto", "built_in", "search_seconds")}), flush=True)
            results["tasks"].append(row)
            results["dtype"] = row["auto"]["dtype"]
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            write_markdown(results, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
