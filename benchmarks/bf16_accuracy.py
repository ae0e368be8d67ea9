"""Does bfloat16 move accuracy? Few-shot SST-2 on smollm2-135m, PET and prompt tuning, bfloat16 runs
against the float32 runs of the same harness protocol (split, seed, steps, batch size).

    pretune bench --task sst-2 --model smollm2-135m --methods pet,prompt-tuning --dtype bfloat16 \\
        --out benchmarks/results/sst-2-smollm2-bf16          # the bfloat16 runs (resumable)
    python benchmarks/bf16_accuracy.py                         # this comparison

A view on two results.json files, nothing run here. The float32 runs are the committed harness runs
(benchmarks/results/sst-2-smollm2, recorded before --dtype existed: float32). The criterion: the mean
test accuracy over the seeds both formats have differs by at most one standard deviation (population
std over the float32 seeds, as the harness reports). Seeds the bfloat16 folder does not hold yet are
listed as missing, and the verdict says on how many seeds it rests.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ARMS = ("pet", "prompt-tuning")


def runs(folder: Path, dtype: str) -> dict[tuple[str, int], dict]:
    """(arm, seed) -> record, for the arms compared, at the given format."""
    data = json.loads((folder / "results.json").read_text())
    found = {}
    for record in data["runs"]:
        key = record["key"]
        if key["arm"] in ARMS and record["protocol"].get("dtype", "float32") == dtype:
            protocol = {k: v for k, v in record["protocol"].items() if k != "dtype"}
            found[(key["arm"], key["seed"])] = {**record, "shared_protocol": protocol}
    return found


def compare(float32: dict, bfloat16: dict) -> list[dict]:
    rows = []
    for arm in ARMS:
        seeds = sorted(seed for a, seed in float32 if a == arm)
        both = [s for s in seeds if (arm, s) in bfloat16
                and bfloat16[(arm, s)]["shared_protocol"] == float32[(arm, s)]["shared_protocol"]]
        f32 = [float32[(arm, s)]["test"]["accuracy"] for s in seeds]
        f32_both = [float32[(arm, s)]["test"]["accuracy"] for s in both]
        b16 = [bfloat16[(arm, s)]["test"]["accuracy"] for s in both]
        std = statistics.pstdev(f32) if len(f32) > 1 else float("nan")
        difference = statistics.mean(b16) - statistics.mean(f32_both) if both else None
        rows.append({
            "arm": arm, "seeds_float32": seeds, "seeds_both": both, "missing_bfloat16": [s for s in seeds if s not in both],
            "float32_per_seed": dict(zip(map(str, seeds), f32)), "bfloat16_per_seed": dict(zip(map(str, both), b16)),
            "float32_mean_all": statistics.mean(f32) if f32 else None, "float32_std_all": std,
            "float32_mean_same_seeds": statistics.mean(f32_both) if both else None,
            "bfloat16_mean": statistics.mean(b16) if b16 else None,
            "bfloat16_std": statistics.pstdev(b16) if len(b16) > 1 else None,
            "difference": difference, "within_one_std": None if difference is None else abs(difference) <= std,
            "train_seconds_float32": [float32[(arm, s)]["train_seconds"] for s in both],
            "train_seconds_bfloat16": [bfloat16[(arm, s)]["train_seconds"] for s in both],
        })
    return rows


def _shown(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(folder)


def markdown(rows: list[dict], float32_folder: Path, bfloat16_folder: Path) -> str:
    lines = ["# Accuracy in bfloat16 against float32: few-shot SST-2, smollm2-135m", "",
             f"float32: `{_shown(float32_folder)}`; bfloat16: `{_shown(bfloat16_folder)}` (`pretune bench --dtype bfloat16`). "
             "Test accuracy per seed (LM-BFF split 16-seed, 872 test sentences); std is the population std over the "
             "float32 seeds.", "",
             "| arm | seed | float32 | bfloat16 | difference |", "|---|---|---|---|---|"]
    for row in rows:
        for seed in row["seeds_float32"]:
            f32 = row["float32_per_seed"][str(seed)]
            b16 = row["bfloat16_per_seed"].get(str(seed))
            cell = f"{b16:.1%}" if b16 is not None else "not run yet"
            diff = f"{b16 - f32:+.1%}" if b16 is not None else "-"
            lines.append(f"| {row['arm']} | {seed} | {f32:.1%} | {cell} | {diff} |")
    lines += ["", "| arm | seeds in both | float32 mean (same seeds) | bfloat16 mean | difference | float32 std (5 seeds) | within one std |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row["seeds_both"]:
            lines.append(f"| {row['arm']} | 0 | - | - | - | {row['float32_std_all']:.1%} | no bfloat16 run finished yet |")
            continue
        lines.append(f"| {row['arm']} | {len(row['seeds_both'])} of {len(row['seeds_float32'])} "
                     f"| {row['float32_mean_same_seeds']:.1%} | {row['bfloat16_mean']:.1%} | {row['difference']:+.1%} "
                     f"| {row['float32_std_all']:.1%} | {'yes' if row['within_one_std'] else 'no'} |")
    missing = [f"{row['arm']} seeds {', '.join(map(str, row['missing_bfloat16']))}" for row in rows if row["missing_bfloat16"]]
    if missing:
        lines += ["", f"Not run yet in bfloat16: {'; '.join(missing)}. Rerunning the bench command above continues "
                  "where it stopped; then rerun this script."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", default=str(RESULTS / "sst-2-smollm2"))
    parser.add_argument("--bfloat16", default=str(RESULTS / "sst-2-smollm2-bf16"))
    parser.add_argument("--out", default=str(RESULTS / "bf16_accuracy"), help="output path without suffix")
    args = parser.parse_args()
    f32_folder, b16_folder = Path(args.float32), Path(args.bfloat16)
    b16 = runs(b16_folder, "bfloat16") if (b16_folder / "results.json").is_file() else {}
    rows = compare(runs(f32_folder, "float32"), b16)
    text = markdown(rows, f32_folder, b16_folder)
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
