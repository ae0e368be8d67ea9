"""PET on few-shot SST-2 with a causal LM: zero-shot patterns, word aggregation, scoring cost, training.

    python benchmarks/pet_sst2.py [--model smollm2-135m] [--steps 40] [--train full] [--threads 2]

All on the 872 test sentences of LM-BFF's SST-2 (K=16 per class), in one process:
1. zero-shot accuracy of several patterns (one model, no training), raw and with contextual calibration;
2. the verbalizer aggregation experiment: one pattern, six words a label, their scores combined
   by logsumexp, mean or max (the words are scored once, then combined three ways);
3. the cost of scoring only the label words' rows of the output layer against computing the
   model's full-vocabulary logits and indexing them, on the same inputs (end to end, and the
   output projection alone), with the largest difference between the two paths' scores;
4. PET training (the built-in pattern, cross-entropy through the shared trainer) on the five
   LM-BFF splits: test accuracy per seed, mean (std).

Writes results/pet_sst2.json and results/pet_sst2.md. A run that stops part-way continues from
the JSON file (sections and seeds already there are kept) when started again with the same options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pretune.api import RunConfig, train_run
from pretune.backbones import load_backbone
from pretune.cloze.verbalizer import AGGREGATIONS, aggregate
from pretune.data import load_task
from pretune.methods import ClozeMethod, build_method
from pretune.training.trainer import TrainConfig
from pretune.tuning import BodyTraining

SEEDS = (13, 21, 42, 87, 100)
ZERO_SHOT = [
    ("Review: {text}\nSentiment: {mask}", "positive=positive negative=negative"),
    ("{text} All in all, the movie was {mask}", "positive=good negative=bad"),
    ("{text} It was {mask}", "positive=great negative=terrible"),
]
AGGREGATION_PATTERN = "Review: {text}\nSentiment: {mask}"
MANY_WORDS = (
    "positive=positive,good,great,excellent,wonderful,amazing "
    "negative=negative,bad,terrible,awful,horrible,poor"
)
COST_SENTENCES, COST_REPEATS = 128, 3


def accuracy(scores: torch.Tensor, targets: list[int]) -> float:
    return float((scores.argmax(dim=-1).numpy() == np.asarray(targets)).mean())


def frozen_pet(backbone, task, pattern: str, verbalizer: str) -> ClozeMethod:
    options = {"patterns": [pattern], "verbalizer": verbalizer}
    return build_method("pet", backbone, task, options, BodyTraining.parse("frozen"))


def zero_shot(backbone, task, batch_size: int) -> list[dict]:
    rows = []
    targets = task.targets(task.test)
    for pattern, verbalizer in ZERO_SHOT:
        method = frozen_pet(backbone, task, pattern, verbalizer).eval()
        start = time.perf_counter()
        scores = method.score_items(method.featurize(task.test), batch_size)
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            calibrated = scores.log_softmax(dim=-1) - method.content_free_log_probs().cpu()
        rows.append({
            "pattern": pattern, "verbalizer": verbalizer, "accuracy": accuracy(scores, targets),
            "calibrated_accuracy": accuracy(calibrated, targets), "seconds": seconds,
        })
        print(f"zero-shot {pattern!r:45} {rows[-1]['accuracy']:.4f} (calibrated {rows[-1]['calibrated_accuracy']:.4f})")
    return rows


@torch.inference_mode()
def aggregation(backbone, task, batch_size: int) -> dict:
    method = frozen_pet(backbone, task, AGGREGATION_PATTERN, MANY_WORDS).eval()
    items = method.featurize(task.test)
    words = torch.cat([
        method.readout.scorer.word_scores(method.collate(items[i : i + batch_size])).float()
        for i in range(0, len(items), batch_size)
    ])
    labels = method.prompt.word_labels
    result = {"pattern": AGGREGATION_PATTERN, "verbalizer": MANY_WORDS}
    for how in AGGREGATIONS:
        result[how] = accuracy(aggregate(words, labels, task.num_labels, how), task.targets(task.test))
        print(f"aggregation {how:10} {result[how]:.4f}")
    return result


@torch.inference_mode()
def scoring_cost(backbone, task, batch_size: int) -> dict:
    """Seconds for the same batches through both paths, alternated and repeated; medians compared."""
    method = frozen_pet(backbone, task, ZERO_SHOT[0][0], ZERO_SHOT[0][1]).eval()
    items = method.featurize(task.test[:COST_SENTENCES])
    batches = [method.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    scorer = method.readout.scorer
    hidden = [method.hidden_states(b) for b in batches]

    def label_rows_only():
        return [scorer.word_scores(b) for b in batches]

    def full_vocabulary():
        return [scorer.full_vocabulary_word_scores(b) for b in batches]

    def projection_label_rows():
        return [scorer.word_scores_from_hidden(h, b) for h, b in zip(hidden, batches)]

    def projection_full():
        return [scorer.output(h) for h in hidden]  # what a model's forward computes: every position, every word

    arms = {"label_rows": label_rows_only, "full_vocabulary": full_vocabulary,
            "projection_label_rows": projection_label_rows, "projection_full": projection_full}
    times = {name: [] for name in arms}
    for fn in arms.values():
        fn()  # warm-up
    for _ in range(COST_REPEATS):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    cheap, full = torch.cat(label_rows_only()), torch.cat(full_vocabulary())
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "sentences": len(items), "batch_size": batch_size, "repeats": COST_REPEATS, "pattern": ZERO_SHOT[0][0],
        "seconds": median, "end_to_end_ratio": median["full_vocabulary"] / median["label_rows"],
        "projection_ratio": median["projection_full"] / median["projection_label_rows"],
        "max_abs_score_difference": float((cheap - full).abs().max()),
    }
    print(f"scoring cost: full-vocabulary / label rows = {result['end_to_end_ratio']:.2f}x end to end, "
          f"{result['projection_ratio']:.1f}x for the output projection alone")
    return result


def trained(model: str, seed: int, args) -> dict:
    training = TrainConfig(steps=args.steps, batch_size=8, body_lr=args.body_lr, eval_every=max(1, args.steps // 4),
                           eval_batch_size=args.batch_size, seed=seed)
    config = RunConfig(task="sst-2", model=model, method="pet", train=args.train, split_seed=seed, training=training)
    result = train_run(config, progress=False, backbone=load_backbone(model))  # fresh weights for every seed
    metrics = result.metrics
    row = {"seed": seed, "pattern": str(result.method.prompt.pattern), "test_accuracy": metrics["test"]["accuracy"], "dev_accuracy": metrics["dev"]["accuracy"],
           "best_step": metrics["train"]["best_step"], "train_seconds": metrics["train"]["seconds"]}
    print(f"trained seed {seed}: test {row['test_accuracy']:.4f} (dev {row['dev_accuracy']:.4f}, best step {row['best_step']})")
    return row


def shown(pattern: str) -> str:
    return pattern.replace("\n", "\\n")


def markdown(results: dict) -> str:
    lines = [
        "# PET on few-shot SST-2 (`benchmarks/pet_sst2.py`)", "",
        f"Model {results['model']}, LM-BFF SST-2 splits (K=16 per class: 32 train, 32 dev), 872 test sentences, "
        f"CPU, torch threads: {results['threads']}. Regenerate with the command at the top of the script.", "",
        "## Zero-shot (no training)", "",
        "| pattern | verbalizer | accuracy | calibrated |", "|---|---|---|---|",
    ]
    for row in results["zero_shot"]:
        lines.append(f"| `{shown(row['pattern'])}` | {row['verbalizer']} | {row['accuracy']:.1%} | {row['calibrated_accuracy']:.1%} |")
    agg = results["aggregation"]
    lines += [
        "", "## Combining a label's words (zero-shot)", "",
        f"Pattern `{shown(agg['pattern'])}`, verbalizer `{agg['verbalizer']}`.", "",
        "| aggregation | accuracy |", "|---|---|",
        *[f"| {how} | {agg[how]:.1%} |" for how in AGGREGATIONS],
    ]
    cost = results["scoring_cost"]
    seconds = cost["seconds"]
    lines += [
        "", "## Scoring cost: label-word rows vs. full-vocabulary logits", "",
        f"{cost['sentences']} test sentences, batches of {cost['batch_size']}, median of {cost['repeats']} alternated "
        f"repeats. Largest difference between the two paths' scores: {cost['max_abs_score_difference']:.1e}.", "",
        "| | label rows only | full vocabulary | ratio |", "|---|---|---|---|",
        f"| end to end (body + output layer) | {seconds['label_rows']:.2f} s | {seconds['full_vocabulary']:.2f} s "
        f"| {cost['end_to_end_ratio']:.2f}x |",
        f"| output projection alone | {seconds['projection_label_rows'] * 1000:.1f} ms "
        f"| {seconds['projection_full'] * 1000:.1f} ms | {cost['projection_ratio']:.0f}x |",
    ]
    runs = results["trained"]
    accuracies = [r["test_accuracy"] for r in runs]
    setup = results["training"]
    pattern = runs[0]["pattern"]
    lines += [
        "", "## PET training", "",
        f"The task's built-in pattern `{shown(pattern)}`, `--train {setup['train']}`, "
        f"{setup['steps']} steps of batch 8, body learning rate {setup['body_lr']}, best dev state kept.", "",
        "| seed | test accuracy | dev accuracy | best step | train seconds |", "|---|---|---|---|---|",
        *[f"| {r['seed']} | {r['test_accuracy']:.1%} | {r['dev_accuracy']:.1%} | {r['best_step']} | {r['train_seconds']:.0f} |"
          for r in runs],
    ]
    if len(accuracies) > 1:
        lines += ["", f"**Mean (std) over {len(accuracies)} seeds: {np.mean(accuracies):.1%} "
                      f"({np.std(accuracies, ddof=1):.1%})** (sample std)."]
    same = [row for row in results["zero_shot"] if row["pattern"] == pattern]
    if same:
        lines[-1] += f" Zero-shot with the same pattern: {same[0]['accuracy']:.1%}."
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train", default="full", help="body training of the trained runs")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--body-lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pet_sst2.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    setup = {"train": args.train, "steps": args.steps, "body_lr": args.body_lr}
    results = json.loads(out.read_text()) if out.is_file() else {}
    if results.get("model") != args.model or results.get("training") != setup:
        results = {"model": args.model, "training": setup, "trained": []}
    results["threads"] = torch.get_num_threads()

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    task = load_task("sst-2", split_seed=42)  # the test set is the same for every seed
    backbone = load_backbone(args.model)
    for section, run in (("zero_shot", zero_shot), ("aggregation", aggregation), ("scoring_cost", scoring_cost)):
        if section not in results:
            results[section] = run(backbone, task, args.batch_size)
            save()
    done = {row["seed"] for row in results["trained"]}
    for seed in SEEDS:
        if seed not in done:
            results["trained"].append(trained(args.model, seed, args))
            save()
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
