"""How much the pattern matters, per method: zero-shot, PET and P-tuning over hand-written patterns.

    python benchmarks/prompt_sensitivity.py [--model smollm2-135m] [--tasks sst-2 trec rte]
                                            [--seeds 13 21 42] [--steps 40] [--test-sample 200]
                                            [--shard 0/2] [--report-only]

For each task, each of six hand-written patterns (with its label words) is run zero-shot, trained
with PET (whole body) and P-tuned (body frozen, four soft tokens in front of the pattern), on the
LM-BFF splits of each seed; and the automatic prompt the same three ways. The automatic prompt is
searched once per task and split (`--pattern auto`, on that split's train + dev only): zero-shot
it is exactly what `pretune eval --pattern auto` evaluates (an ensemble where the search kept
one); trained, it is the search's best pattern and words treated like one more hand-written
pattern (same options, no calibration), so that it is compared on equal terms.

The report gives, per task and method, the mean over patterns (each pattern's mean over seeds)
and the spread across patterns (best - worst, std), and where the automatic prompt lands within
it. Does P-tuning shrink the spread, as its paper claims?

Every finished cell is one line of results/prompt_sensitivity/cells.jsonl, so a run that stops
continues where it was, and `--shard K/N` runs the K-th of N interleaved parts of the (seed, task)
pairs in its own process (two shards for two cores). Seeds go outermost: after the first seed the
study is whole for one split. The report (results/prompt_sensitivity.{md,json,png}) is rewritten
after every (seed, task) pair, and alone with `--report-only`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pretune.api import RunConfig, evaluate_untrained, train_run
from pretune.precision import cpu_summary
from pretune.training.trainer import TrainConfig

DATA = Path(os.environ.get("PRETUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "fewshot"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("zero-shot", "pet", "ptuning")
AUTO = "auto"

TREC_WORDS = ("description=description entity=thing abbreviation=abbreviation human=person location=place "
              "number=number")
# Six hand-written patterns a task (causal-LM style: each ends with the mask), as a user might write them.
PATTERNS = {
    "sst-2": [
        ("{text} It was {mask}", "positive=great negative=terrible"),
        ("Review: {text}\nSentiment: {mask}", "positive=positive negative=negative"),
        ("{text} All in all, the movie was {mask}", "positive=good negative=bad"),
        ("{text} In summary, the film is {mask}", "positive=great negative=awful"),
        ("Movie review: {text}\nDid the reviewer like it? {mask}", "positive=yes negative=no"),
        ("{text}\nThe sentiment of this review is {mask}", "positive=positive negative=negative"),
    ],
    "trec": [
        ("Question: {text}\nThe answer is a {mask}", TREC_WORDS),
        ("{text}\nAnswer type: {mask}", TREC_WORDS),
        ("{text} The answer is about a {mask}", TREC_WORDS),
        ("Q: {text}\nThis asks for a {mask}", TREC_WORDS),
        ("{text}\nCategory: {mask}", TREC_WORDS),
        ("What kind of answer does this need? {text}\nA {mask}", TREC_WORDS),
    ],
    "rte": [
        ("{text}\nQuestion: {text_pair} True or false?\nAnswer: {mask}", "entailment=true not_entailment=false"),
        ("{text}\nQuestion: {text_pair} Yes or no?\nAnswer: {mask}", "entailment=yes not_entailment=no"),
        ("Premise: {text}\nHypothesis: {text_pair}\nDoes the premise imply the hypothesis? {mask}",
         "entailment=yes not_entailment=no"),
        ("{text} Based on that, is it true that {text_pair}? {mask}", "entailment=yes not_entailment=no"),
        ("{text}\nDoes it follow that {text_pair}? {mask}", "entailment=yes not_entailment=no"),
        ("Sentence 1: {text}\nSentence 2: {text_pair}\nEntailment: {mask}", "entailment=yes not_entailment=no"),
    ],
}


def cell(args, task: str, seed: int, method: str, pattern: str, words: str | None) -> dict:
    """One method on one pattern and split: its test accuracy, what a search chose, and its cost."""
    options = {"patterns": [pattern]} if words is None else {"patterns": [pattern], "verbalizer": words}
    name = "pet" if method == "zero-shot" else method
    if name == "ptuning":
        options["prompt_length"] = 4  # soft tokens in front of the pattern
    config = RunConfig(task=str(DATA / task), model=args.model, method=name, method_options=options, split_seed=seed,
                       test_sample=args.test_sample, training=TrainConfig(steps=args.steps, seed=seed))
    load, start = os.getloadavg()[0], time.perf_counter()
    if method == "zero-shot":
        metrics = evaluate_untrained(config, progress=False)
    else:
        metrics = train_run(config, progress=False).metrics
    return {"test_accuracy": metrics["test"]["accuracy"], "test_examples": metrics["test"]["examples"],
            "prompt": metrics.get("prompt"), "seconds": time.perf_counter() - start, "load": [load, os.getloadavg()[0]]}


def read_cells(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_cell(row: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one short line in one write: shards append to the same file safely
        f.write(json.dumps(row) + "\n")


def run_pair(args, task: str, seed: int, done: set, bar) -> None:
    """Every cell of one task and split: the search first (zero-shot `auto`), then each hand-written
    pattern three ways, then the search's best pattern and words trained like them."""
    def run(method: str, label: str, pattern: str, words: str | None) -> dict:
        key = (task, seed, method, label)
        if key not in done:
            row = {"task": task, "seed": seed, "method": method, "pattern": label, "words": words,
                   **cell(args, task, seed, method, pattern, words)}
            append_cell(row, args.cells)
            done[key] = row
            tqdm.write(f"{task} seed {seed} {method:9s} {label!r}: {100 * row['test_accuracy']:.1f} "
                       f"({row['seconds']:.0f} s, load {row['load'][0]:.1f})")
        bar.update(1)
        return done[key]

    prompt = run("zero-shot", AUTO, AUTO, None)["prompt"]
    for pattern, words in PATTERNS[task]:
        for method in METHODS:
            run(method, pattern, pattern, words)
    for method in METHODS[1:]:
        run(method, AUTO, prompt["patterns"][0], prompt["verbalizer"])


def summarise(cells: list[dict]) -> dict:
    """Per task and method: the hand-written patterns' mean, median, spread and std (each pattern
    its mean over the seeds it has), and the automatic prompt's mean and rank among them."""
    table = {}
    for task in sorted({c["task"] for c in cells}):
        for method in METHODS:
            per_pattern: dict[str, list[float]] = {}
            for c in cells:
                if c["task"] == task and c["method"] == method:
                    per_pattern.setdefault(c["pattern"], []).append(c["test_accuracy"])
            hand = [statistics.mean(v) for p, v in per_pattern.items() if p != AUTO]
            if len(hand) < 2:
                continue
            auto = statistics.mean(per_pattern[AUTO]) if AUTO in per_pattern else None
            table[f"{task}/{method}"] = {
                "task": task, "method": method, "patterns": len(hand),
                "seeds": sorted({c["seed"] for c in cells if c["task"] == task and c["method"] == method}),
                "mean": statistics.mean(hand), "median": statistics.median(hand), "best": max(hand),
                "worst": min(hand), "spread": max(hand) - min(hand), "std": statistics.stdev(hand), "auto": auto,
                "auto_beats": None if auto is None else sum(auto > h for h in hand),
            }
    return table


def write_report(args, cells: list[dict], out: Path) -> None:
    table = summarise(cells)
    info = cpu_summary()
    expected = len(args.tasks) * len(args.seeds) * (len(METHODS) * (len(PATTERNS["sst-2"]) + 1))
    loads = [c["load"][0] for c in cells]
    lines = [
        "# Prompt sensitivity: hand-written patterns x zero-shot / PET / P-tuning", "",
        f"Model {args.model}; LM-BFF few-shot splits (16 per class) of seeds {args.seeds}; {args.steps} training "
        f"steps; test accuracy on a fixed random sample of {args.test_sample} test examples (the whole test set when "
        "smaller). Zero-shot: the pattern as it is; PET: the whole body trained (the default); P-tuning: body frozen, "
        "four soft tokens in front of the pattern through the default encoder. Each pattern's figure is its mean over "
        "seeds; spread = best - worst pattern. `auto`: the prompt search on the split's train + dev only (zero-shot: "
        "what `--pattern auto` evaluates; trained: its best pattern and words, trained like the others). "
        "Produced by `benchmarks/prompt_sensitivity.py`.", "",
        f"Machine: {info['model']} (amx_bf16 {info['amx_bf16']}, avx512_bf16 {info['avx512_bf16']}), {os.cpu_count()} cores, "
        f"torch {torch.__version__}, 1 torch thread per shard; load average at the cells' starts "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f}.", "",
        f"Cells finished: {len(cells)} of {expected}."
        + (" **Partial**: the run continues where it stopped (same command); until every seed is in, a pattern's "
           "mean may rest on other splits than its neighbours' (the count of seeds is beside each figure below), "
           "so spreads and ranks are provisional." if len(cells) < expected else ""), "",
        "| task / method | seeds | patterns | mean | median | worst | best | spread | std | auto | auto beats |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in table.items():
        auto = "-" if row["auto"] is None else f"{100 * row['auto']:.1f}"
        beats = "-" if row["auto"] is None else f"{row['auto_beats']} of {row['patterns']}"
        lines.append(f"| {key} | {len(row['seeds'])} | {row['patterns']} | {100 * row['mean']:.1f} | "
                     f"{100 * row['median']:.1f} | {100 * row['worst']:.1f} | {100 * row['best']:.1f} | "
                     f"{100 * row['spread']:.1f} | {100 * row['std']:.1f} | {auto} | {beats} |")
    lines += ["", "Per pattern (mean over seeds, in percent):", "",
              "| task | pattern | words | zero-shot | PET | P-tuning |", "|---|---|---|---|---|---|"]
    for task in sorted({c["task"] for c in cells}):
        for pattern, words in [*PATTERNS[task], (AUTO, None)]:
            figures = []
            for method in METHODS:
                values = [c["test_accuracy"] for c in cells if (c["task"], c["method"], c["pattern"]) == (task, method, pattern)]
                figures.append(f"{100 * statistics.mean(values):.1f} ({len(values)})" if values else "-")
            shown = words or next((c["prompt"]["verbalizer"] for c in cells if c["task"] == task and c["prompt"]), "")
            lines.append(f"| {task} | `{pattern!r}` | {shown} | " + " | ".join(figures) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"model": args.model, "seeds": args.seeds, "steps": args.steps,
                                                    "test_sample": args.test_sample, "machine": info,
                                                    "summary": table, "cells": cells}, indent=2) + "\n")
    _plot(cells, out.with_suffix(".png"))


def _plot(cells: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in cells})
    if not tasks:
        return
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for x, method in enumerate(METHODS):
            mine = [c for c in cells if c["task"] == task and c["method"] == method]
            hand = {}
            for c in mine:
                if c["pattern"] != AUTO:
                    hand.setdefault(c["pattern"], []).append(c["test_accuracy"])
            axis.scatter([x] * len(hand), [statistics.mean(v) for v in hand.values()], alpha=0.5, color="grey",
                         label="hand-written (mean over seeds)" if x == 0 else None)
            auto = [c["test_accuracy"] for c in mine if c["pattern"] == AUTO]
            if auto:
                axis.scatter([x], [statistics.mean(auto)], color="red", marker="D", label="auto" if x == 0 else None)
        axis.set_xticks(range(len(METHODS)), METHODS)
        axis.set_title(task)
        axis.set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--test-sample", type=int, default=200)
    parser.add_argument("--shard", default="0/1", help="K/N: run the K-th of N interleaved parts of the (seed, task) pairs")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "prompt_sensitivity"))
    args = parser.parse_args()
    out = Path(args.out)
    args.cells = out / "cells.jsonl"  # the cells, one a line; the report files sit beside the folder
    if not args.report_only:
        torch.set_num_threads(1)
        index, count = (int(x) for x in args.shard.split("/"))
        pairs = [(seed, task) for seed in args.seeds for task in args.tasks][index::count]
        done = {(c["task"], c["seed"], c["method"], c["pattern"]): c for c in read_cells(args.cells)}
        per_pair = len(METHODS) * (len(PATTERNS["sst-2"]) + 1)
        with tqdm(total=len(pairs) * per_pair, desc=f"shard {args.shard}", unit="cell") as bar:
            for seed, task in pairs:
                run_pair(args, task, seed, done, bar)
                write_report(args, read_cells(args.cells), out)
    write_report(args, read_cells(args.cells), out)


if __name__ == "__main__":
    main()
