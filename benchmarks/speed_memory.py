"""Training and evaluation speed and peak memory: pretune's methods against the transformers/PEFT
arm a user would otherwise pick, at the same number format and each at its defaults, measured in one run.

    python benchmarks/speed_memory.py [--model smollm2-135m] [--steps 40] [--test 256] [--threads 2]

Data: few-shot SST-2 split 16-42 (32 training sentences, no dev set: nothing but training is timed)
and the first N test sentences for evaluation speed. Every arm trains for the same number of steps
at batch size 8 (pretune's head too, although on cached features it could afford far more) and runs
in its own process (the benchmark harness's worker), so its peak RSS is its own.

Number formats: pretune's default is `--dtype auto` (bfloat16 on a CPU or GPU that computes it
natively, float32 elsewhere); transformers and PEFT default to float32. Each arm runs at float32 and,
where `auto` picks one, at the reduced format too, so each pair gets three ratios: both at their
defaults, both at float32, both at the reduced format (the baselines then compute as pretune does:
frozen weights in the format, trainable ones float32, autocast).

Also measured in this process (`forward_limit`): each prompt method's evaluation in tokens/s against a
bare forward pass of the same model on the same token batches at the same format; one training step
profiled before and after the change the profile led to; start-up and padding.
Prints the tables and writes benchmarks/results/speed_memory.{md,json} (rewritten after every arm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import forward_limit
import torch

from pretune.bench.arms import ARMS, RunSpec
from pretune.bench.harness import run_in_worker
from pretune.data import find_benchmark_task
from pretune.precision import cpu_summary, resolve_precision

RESULTS = Path(__file__).parent / "results"
PAIRS = [  # the frozen-body prompt methods first: the targets are about them
    ("prompt tuning vs PEFT PROMPT_TUNING", "prompt-tuning", "peft-prompt"),
    ("P-tuning vs PEFT P_TUNING", "ptuning", "peft-ptuning"),
    ("head (cached) vs frozen-body HF head (no cache)", "head", "hf-frozen"),
    ("PET vs full fine-tuning", "pet", "hf-full"),
    ("head (cached) vs full fine-tuning", "head", "hf-full"),
]
PROMPT_ARMS = ("prompt-tuning",)  # its evaluation against the bare forward pass
DEFAULTS = {"pretune": "auto", "transformers": "float32", "peft": "float32"}  # each family's own default


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
    measured, error = run_in_worker(arm, spec, scratch / f"{arm}-{spec.dtype}.log", threads, options)
    if measured is None:
        raise SystemExit(f"{arm} at {spec.dtype} failed: {error} (log: {scratch / f'{arm}-{spec.dtype}.log'})")
    keys = ("train_seconds", "train_examples_per_second", "eval_examples_per_second", "peak_rss_mib",
            "trainable_parameters", "loadavg_before", "loadavg_after", "torch_threads", "dtype")
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


def ratio_rows(results: dict, reduced: str | None) -> list[dict]:
    """Per pair: pretune / baseline at their defaults, at float32, and at the reduced format."""
    rows = []
    for label, ours, theirs in PAIRS:
        settings = [("defaults", _default(ours), _default(theirs)), ("float32", "float32", "float32")]
        if reduced:
            settings.append((reduced, reduced, reduced))
        for setting, our_dtype, their_dtype in settings:
            a, b = results.get(f"{ours}@{our_dtype}"), results.get(f"{theirs}@{their_dtype}")
            if a is None or b is None:
                continue
            rows.append({
                "pair": label, "setting": setting, "pretune": f"{ours}@{our_dtype}", "baseline": f"{theirs}@{their_dtype}",
                "train_speedup": a["train_examples_per_second"] / b["train_examples_per_second"],
                "eval_speedup": a["eval_examples_per_second"] / b["eval_examples_per_second"],
                "peak_rss_ratio": a["peak_rss_mib"] / b["peak_rss_mib"],
            })
    return rows


def _default(arm: str) -> str:
    return resolve_precision(DEFAULTS[ARMS[arm].family], "cpu").name


def markdown(meta: dict, results: dict, rows: list[dict], extra: dict, notes: list[str]) -> str:
    cpu = meta["cpu"]
    lines = [
        "# Speed and memory: pretune vs transformers/PEFT",
        "",
        f"Model {meta['model']}; few-shot SST-2 16-42 (32 sentences), {meta['steps']} steps x batch 8; evaluation on "
        f"{meta['test_examples']} test sentences (batch 32); {meta['threads']} torch thread(s); each arm in its own process. "
        f"Measured {meta['date']} by `python benchmarks/speed_memory.py {meta['argv']}`.",
        "",
        f"CPU: {cpu['model']}, {meta['cpus']} CPUs; native bfloat16 features: {', '.join(cpu['bfloat16_features']) or 'none'} "
        f"(amx_bf16 {cpu['amx_bf16']}, avx512_bf16 {cpu['avx512_bf16']}; torch capability {cpu['torch_capability']}); "
        f"torch {meta['torch']}, Python {meta['python']}. `--dtype auto` picks **{meta['auto']}** here.",
        "",
        "| arm @ format | trainable params | train s | train ex/s | eval ex/s | peak RSS MiB | load avg (before, after) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['trainable_parameters']:,} | {r['train_seconds']:.1f} | {r['train_examples_per_second']:.2f} "
            f"| {r['eval_examples_per_second']:.2f} | {r['peak_rss_mib']:.0f} "
            f"| {r['loadavg_before'][0]:.1f}, {r['loadavg_after'][0]:.1f} |"
        )
    lines += ["", "| pair (pretune / baseline) | formats | training ex/s | evaluation ex/s | peak RSS |",
              "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['pair']} | {row['setting']}: {row['pretune']} / {row['baseline']} "
                     f"| {row['train_speedup']:.2f}x | {row['eval_speedup']:.2f}x | {row['peak_rss_ratio']:.2f}x |")
    lines += _extra_lines(extra)
    lines += [""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _extra_lines(extra: dict) -> list[str]:
    lines = []
    if extra.get("evaluation"):
        lines += ["", "Evaluation against a bare forward pass (`body(input_ids, attention_mask)` of the same model on the "
                  "same token batches, same format; pretune's side includes tokenising and scoring):", "",
                  "| arm | format | tokens | pretune tokens/s | bare forward tokens/s | ratio |", "|---|---|---|---|---|---|"]
        for e in extra["evaluation"]:
            lines.append(f"| {e['arm']} | {e['dtype']} | {e['tokens']:,} | {e['pretune_tokens_per_second']:.0f} "
                         f"| {e['bare_tokens_per_second']:.0f} | {e['ratio']:.2f}x |")
    if extra.get("profile"):
        lines += ["", "Profile of one frozen-body training step (prompt tuning, batch 8, torch.profiler, self CPU time): "
                  "before = CPU torch's bfloat16 attention kernels, after = attention in float32 while training "
                  "(pretune's default in a reduced format on a CPU):", ""]
        for name, p in extra["profile"].items():
            ops = "; ".join(f"{o['op']} {o['self_seconds']:.2f} s ({o['share']:.0%})" for o in p["top_ops"])
            lines.append(f"- {name}: step {p['step_seconds_best']:.2f} s (best of {len(p['step_seconds'])}); top ops: {ops}")
    if extra.get("startup"):
        s = extra["startup"]
        lines += ["", f"Start-up of a fresh process: importing torch and transformers {s['import_seconds']:.1f} s, then "
                  f"loading the model (cached safetensors) {s['load_seconds']:.1f} s."]
    if extra.get("padding") is not None:
        p = extra["padding"]
        lines += ["", f"Padding in the training batches (random batches of 8 sentences of different lengths, as drawn by "
                  f"the trainer): {p['whole']:.0%} of the token positions when a batch runs whole; {p['cut']:.0%} as the "
                  f"trainer runs it, cut by length into {p['passes_per_batch']:.1f} forward passes per batch on average "
                  "(`training/packing.py`; same gradient). Evaluation batches are sorted by length (see the token "
                  "counts above)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=40, help="training steps of every arm (batch 8)")
    parser.add_argument("--test", type=int, default=256, help="test sentences timed for evaluation speed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="only the first N pairs (the prompt methods first)")
    parser.add_argument("--out", default=str(RESULTS / "speed_memory"), help="output path without suffix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    auto = resolve_precision("auto", "cpu").name
    dtypes = ["float32"] + ([auto] if auto != "float32" else [])
    pairs = PAIRS[: args.pairs]
    wanted = list(dict.fromkeys(arm for _, ours, theirs in pairs for arm in (ours, theirs)))
    notes = [f"{arm} skipped: {ARMS[arm].unavailable_reason()}" for arm in wanted if ARMS[arm].unavailable_reason()]
    runnable = [arm for arm in wanted if not ARMS[arm].unavailable_reason()]
    meta = {"model": args.model, "steps": args.steps, "test_examples": args.test, "threads": args.threads,
            "cpus": os.cpu_count(), "cpu": cpu_summary(), "torch": torch.__version__, "python": platform.python_version(),
            "auto": auto, "date": time.strftime("%Y-%m-%d %H:%M"),
            "argv": " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    results, extra = {}, {}

    def write() -> str:
        rows = ratio_rows(results, auto if auto != "float32" else None)
        text = markdown(meta, results, rows, extra, [*notes, load_note(results, args.threads)] if results else notes)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".md").write_text(text)
        record = {**meta, "arms": results, "ratios": rows, **extra, "notes": notes}
        Path(args.out + ".json").write_text(json.dumps(record, indent=2) + "\n")
        return text

    with tempfile.TemporaryDirectory(prefix="pretune-speed-") as scratch:
        task = speed_task(Path(scratch) / "sst-2", args.test)
        spec = RunSpec(task=str(task), model=args.model, seed=42, steps=args.steps, batch_size=8, eval_batch_size=32,
                       device="cpu")
        for arm in runnable:
            for dtype in dtypes:
                name = f"{arm}@{dtype}"
                results[name] = measure(arm, replace(spec, dtype=dtype), args.threads, Path(scratch))
                r = results[name]
                print(f"{name:<24} train {r['train_examples_per_second']:7.2f} ex/s   eval {r['eval_examples_per_second']:7.2f} "
                      f"ex/s   peak {r['peak_rss_mib']:6.0f} MiB   load {r['loadavg_after'][0]:.1f}", flush=True)
                write()
        extra["evaluation"] = [forward_limit.evaluation_against_bare_forward(replace(spec, dtype=dtype), arm)
                               for arm in PROMPT_ARMS for dtype in dtypes]
        write()
        if auto != "float32":
            extra["profile"] = forward_limit.attention_profile(replace(spec, dtype=auto), "prompt-tuning")
        extra["padding"] = forward_limit.training_padding(spec, "prompt-tuning", args.steps)
        extra["startup"] = forward_limit.startup_seconds(args.model)
    print()
    print(write())


if __name__ == "__main__":
    main()
