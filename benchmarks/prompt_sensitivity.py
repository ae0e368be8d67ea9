"""How much the pattern matters, per method: zero-shot, PET and P-tuning over hand-written patterns.

    python benchmarks/prompt_sensitivity.py [--model smollm2-135m] [--tasks sst-2 trec rte]
                                            [--seeds 13 21 42] [--steps 40] [--max-test 500]

For each task, each of six hand-written patterns (with its label words) is run zero-shot, trained
with PET (whole body) and P-tuned (body frozen, four soft tokens in front of the pattern), on the
LM-BFF splits of each seed; and the automatic prompt (`--pattern auto`, chosen on that split's
train + dev) the same three ways. The report gives, per task and method, the mean over patterns
(each pattern's mean over seeds) and the spread across patterns (max - min, std), and where the
automatic prompt lands within it. Does P-tuning shrink the spread, as its paper claims?

Writes results/prompt_sensitivity.{json,md,png}; a run that stops part-way continues from the
JSON file (cells already there are kept). Written for issue 13; not yet run on the shared tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from pretune.api import RunConfig, evaluate_untrained, train_run
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


def cell(model: str, task: str, seed: int, method: str, pattern: str, words: str | None, steps: int) -> dict:
    options = {"patterns": [pattern]} if words is None else {"patterns": [pattern], "verbalizer": words}
    name = "pet" if method == "zero-shot" else method
    if name == "ptuning" and pattern != AUTO:
        options["prompt_length"] = 4  # soft tokens in front of the hand-written pattern
    config = RunConfig(task=str(DATA / task), model=model, method=name, method_options=options, split_seed=seed,
                       training=TrainConfig(steps=steps, seed=seed))
    if method == "zero-shot":
        metrics = evaluate_untrained(config, progress=False)
    else:
        metrics = train_run(config, progress=False).metrics
    return {"test_accuracy": metrics["test"]["accuracy"], "prompt": metrics.get("prompt")}


def summarise(cells: list[dict]) -> dict:
    table = {}
    for task in sorted({c["task"] for c in cells}):
        for method in METHODS:
            per_pattern = {}
            for c in cells:
                if c["task"] == task and c["method"] == method:
                    per_pattern.setdefault(c["pattern"], []).append(c["test_accuracy"])
            hand = [statistics.mean(v) for p, v in per_pattern.items() if p != AUTO]
            if len(hand) < 2:
                continue
            auto = statistics.mean(per_pattern[AUTO]) if AUTO in per_pattern else None
            table[f"{task}/{method}"] = {"mean": statistics.mean(hand), "median": statistics.median(hand),
                                         "spread": max(hand) - min(hand), "std": statistics.stdev(hand),
                                         "auto": auto, "patterns": len(hand)}
    return table


def write_report(results: dict, out: Path) -> None:
    table = summarise(results["cells"])
    lines = ["# Prompt sensitivity: hand-written patterns x zero-shot / PET / P-tuning", "",
             f"Model {results['model']}, seeds {results['seeds']}, {results['steps']} training steps. "
             "Each pattern's accuracy is its mean over seeds; spread = best - worst pattern.", "",
             "| task / method | patterns | mean | median | spread | std | auto prompt |", "|---|---|---|---|---|---|---|"]
    for key, row in table.items():
        auto = f"{100 * row['auto']:.1f}" if row["auto"] is not None else "-"
        lines.append(f"| {key} | {row['patterns']} | {100 * row['mean']:.1f} | {100 * row['median']:.1f} | "
                     f"{100 * row['spread']:.1f} | {100 * row['std']:.1f} | {auto} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(results["cells"], out.with_suffix(".png"))


def _plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in cells})
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for x, method in enumerate(METHODS):
            values = [c["test_accuracy"] for c in cells if c["task"] == task and c["method"] == method]
            auto = [c["test_accuracy"] for c in cells if c["task"] == task and c["method"] == method and c["pattern"] == AUTO]
            axis.scatter([x] * len(values), values, alpha=0.4, color="grey")
            if auto:
                axis.scatter([x] * len(auto), auto, color="red", label="auto" if x == 0 else None)
        axis.set_xticks(range(len(METHODS)), METHODS)
        axis.set_title(task)
        axis.set_ylabel("test accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=list(PATTERNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS / "prompt_sensitivity"))
    args = parser.parse_args()
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {"cells": []}
    results.update(model=args.model, seeds=args.seeds, steps=args.steps)
    done = {(c["task"], c["seed"], c["method"], c["pattern"]) for c in results["cells"]}
    for task in args.tasks:
        for seed in args.seeds:
            for method in METHODS:
                for pattern, words in [*PATTERNS[task], (AUTO, None)]:
                    if (task, seed, method, pattern) in done:
                        continue
                    row = cell(args.model, task, seed, method, pattern, words, args.steps)
                    results["cells"].append({"task": task, "seed": seed, "method": method, "pattern": pattern, **row})
                    print(task, seed, method, repr(pattern), f"{row['test_accuracy']:.4f}", flush=True)
                    json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_report(results, out)


if __name__ == "__main__":
    main()
