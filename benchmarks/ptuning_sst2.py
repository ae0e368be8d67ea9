"""P-tuning (LSTM, MLP, no encoder = prompt tuning) and deep prompts on few-shot SST-2 with the body
frozen, against zero-shot PET with the same anchor words; their size, and their peak memory against
full fine-tuning measured the same way.

    python benchmarks/ptuning_sst2.py [--run] [--jobs 2] [--threads 1]

The runs are the benchmark harness's (`pretune bench`, LM-BFF protocol: split 16-<seed> with 32
training and 32 dev sentences, the seed also the training seed, 100 steps x batch 8, the best dev
state kept, one evaluation on the 872 test sentences; every run in a process of its own, so its
peak RSS is its own). This script reads them from the harness's results folder
(benchmarks/results/sst-2-smollm2, the one `make bench` fills) and writes the P-tuning view of them:
benchmarks/results/ptuning_sst2.{md,json}. With `--run` it first runs what is missing (the harness
resumes: finished runs are not redone).

Full fine-tuning is the `pet` arm (PET's pattern, the whole body training) and the transformers
`hf-full` arm: same steps, batch and data, so the memory ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from pretune.bench.arms import ARMS, LM_BFF_SEEDS, RunSpec
from pretune.bench.harness import BenchConfig, run_bench, run_key

RESULTS = Path(__file__).parent / "results"
HARNESS = RESULTS / "sst-2-smollm2"
PROMPT_ARMS = ("zero-shot", "ptuning", "ptuning-mlp", "prompt-tuning", "deep-prompt")
FULL_FINE_TUNING = ("pet", "hf-full")
MODEL, TASK = "smollm2-135m", "sst-2"


def harness_runs(seeds: list[int]) -> dict[str, list[dict]]:
    """arm -> its finished runs under the current arm options and protocol, by seed."""
    saved = json.loads((HARNESS / "results.json").read_text())["runs"]
    by_key = {json.dumps(run["key"], sort_keys=True): run for run in saved}
    found = {}
    for arm in (*PROMPT_ARMS, *FULL_FINE_TUNING):
        keys = [json.dumps(run_key(ARMS[arm], RunSpec(task=TASK, model=MODEL, seed=seed)), sort_keys=True)
                for seed in seeds]
        found[arm] = [by_key[key] for key in keys if key in by_key]
    return found


def accuracy(run: dict) -> float:
    return run["test"]["accuracy"]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    # population std, as the harness's report and LM-BFF's published numbers use
    return f"{100 * statistics.mean(values):.1f} ({100 * statistics.pstdev(values):.1f})"


def summary(runs: list[dict], full_rss: float | None) -> dict:
    rss = statistics.mean(r["peak_rss_mib"] for r in runs)
    return {
        "seeds": [r["key"]["seed"] for r in runs],
        "test_accuracy": [accuracy(r) for r in runs],
        "trainable_parameters": runs[0]["trainable_parameters"],
        "adapter_bytes": runs[0]["adapter_bytes"],
        "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs),
        "peak_rss_mib_mean": rss,
        "peak_rss_vs_full_fine_tuning": rss / full_rss if full_rss else None,
    }


def markdown(found: dict[str, list[dict]], rows: dict[str, dict], seeds: list[int]) -> str:
    lines = [
        "# P-tuning, prompt tuning and deep prompts on few-shot SST-2 (`benchmarks/ptuning_sst2.py`)", "",
        f"Model {MODEL}; LM-BFF SST-2 splits 16-<seed>, seeds {', '.join(map(str, seeds))} (32 train, 32 dev "
        "sentences; 100 steps x batch 8, best dev state kept, 872 test sentences). The runs are the benchmark "
        f"harness's, read from `{HARNESS.relative_to(RESULTS.parent.parent)}/results.json`; every run in its own "
        "process on CPU, 1 torch thread. Mean (population std, as in the harness's report and LM-BFF) over the seeds that finished.", "",
        "| arm | what trains | seeds | test accuracy % | per seed | trainable params | adapter bytes | train s "
        "| peak RSS MiB | RSS / full FT (pet) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in rows.items():
        ratio = row["peak_rss_vs_full_fine_tuning"]
        lines.append(
            f"| {arm} | {ARMS[arm].about} | {len(row['seeds'])} | {mean_std(row['test_accuracy'])} "
            f"| {', '.join(f'{100 * a:.1f}' for a in row['test_accuracy'])} | {row['trainable_parameters']:,} "
            f"| {row['adapter_bytes']:,} | {row['train_seconds_mean']:.0f} | {row['peak_rss_mib_mean']:.0f} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    missing = [f"{arm} ({len(seeds) - len(found[arm])} of {len(seeds)})" for arm in found if len(found[arm]) < len(seeds)]
    loads = [max(r["loadavg_before"][0], r["loadavg_after"][0]) for runs in found.values() for r in runs]
    lines += [
        "", "## Reading it", "",
        "- zero-shot is PET's built-in causal pattern `Review: {text}\\nSentiment: {mask}` with label words "
        "positive/negative, untrained (one result, the same for every seed). The P-tuning arms put their soft tokens "
        "in front of that same pattern, so the anchor words are the same.",
        "- Trainable parameters count what trained (the prompt encoder included); the adapter holds only the "
        "materialised prompt (`finalize`), so prediction needs no encoder: adapter bytes are the saved "
        "`adapter.safetensors` (or the trainable weights for full fine-tuning).",
        "- Peak RSS includes the fp32 model itself. With the body frozen it has no gradients and no optimizer state; "
        "activations are still kept for the backward pass to the prompt.",
        f"- 1-minute load average around the runs: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs "
        "(two runs at a time, other work beside them): training seconds are inflated and noisy; accuracy and "
        "memory are not affected.",
    ]
    if missing:
        lines.append(f"- Not yet run (the harness continues them): {', '.join(missing)}.")
    lines += [f"- Written {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the missing runs first (resumable)")
    parser.add_argument("--seeds", default=",".join(map(str, LM_BFF_SEEDS)))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.run:
        run_bench(BenchConfig(tasks=[TASK], out=HARNESS, model=MODEL, arms=[*PROMPT_ARMS, *FULL_FINE_TUNING],
                              seeds=seeds, threads=args.threads, jobs=args.jobs))
    found = harness_runs(seeds)
    full_rss = statistics.mean(r["peak_rss_mib"] for r in found["pet"]) if found["pet"] else None
    rows = {arm: summary(runs, full_rss) for arm, runs in found.items() if runs}
    text = markdown(found, rows, seeds)
    (RESULTS / "ptuning_sst2.json").write_text(json.dumps({"model": MODEL, "task": TASK, "arms": rows}, indent=2) + "\n")
    (RESULTS / "ptuning_sst2.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
