"""The nine deliberate bugs of issue 18, each applied to a copy of the source, then the fast suite
run on it: a bug the suite does not notice is a behaviour no test pins.

    python benchmarks/issue18_mutations.py            # prints the table, writes benchmarks/results/issue18_mutations.json
    python benchmarks/issue18_mutations.py --only 5,6 # re-checks those bugs (1-based), keeps the other rows

Each row records the load average when its run ended (the seconds mean little on a loaded machine).

Each bug is one textual change (old -> new) in one module; the script refuses to run when the text
is no longer there (the code moved), so the table cannot go stale silently.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# behaviour changed, module, old text, new text
BUGS = [
    ("the best dev state is not restored after training", "src/pretune/training/trainer.py",
     "            method.load_trainable_state_dict(best_state)", "            pass"),
    ("`mean` aggregation divides by the largest word count instead of each label's own", "src/pretune/cloze/verbalizer.py",
     "weights / weights.sum(dim=1, keepdim=True)", "weights / weights.sum(dim=1, keepdim=True).max()"),
    ("PET ignores `--aggregate` and always uses logsumexp", "src/pretune/cloze/readouts/verbalizer.py",
     "self.num_labels, self.how)", "self.num_labels, 'logsumexp')"),
    ("PET's auxiliary LM loss is not added to the loss", "src/pretune/training/trainer.py",
     "loss = loss + auxiliary", "loss = loss"),
    ("ensemble weighting by dev accuracy gives uniform weights", "src/pretune/training/recipes.py",
     'if self.config.ensemble_weighting == "dev":', "if False:"),
    ("the distillation temperature is ignored", "src/pretune/training/recipes.py",
     "(scores / temperature).softmax", "scores.softmax"),
    ("gradient accumulation does not scale the loss", "src/pretune/training/trainer.py",
     "/ len(indices)) / config.grad_accum", "/ len(indices))"),
    ("the best state is replaced on a tie instead of a strict improvement", "src/pretune/training/trainer.py",
     "if dev_metrics[metric] > loop.best_metric:", "if dev_metrics[metric] >= loop.best_metric:"),
    ("the causal LM's normaliser is skipped one token too far", "src/pretune/cloze/lm.py",
     "normalize = position > len(r.prefix)", "normalize = position > len(r.prefix) + 1"),
    ("--weight-decay is read and never used (the bug the issue found)", "src/pretune/training/trainer.py",
     'decay = 0.0 if role == "no_decay" else config.weight_decay', 'decay = 0.0 if role == "no_decay" else 0.01'),
]


def run_fast_suite(source: Path) -> tuple[bool, str, float]:
    """(suite passed, first failing test, seconds) with `source` as the package's src folder."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    # The value tests first (pytest drops the repeated paths), so a caught bug stops the run early.
    first = [str(ROOT / "tests" / name) for name in ("test_training_values.py", "test_cloze_values.py", "test_ensemble_values.py")]
    command = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
               "-o", "pythonpath=", *first, str(ROOT / "tests")]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    failed = next((line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED")), "")
    return done.returncode == 0, failed, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated bug numbers (1-based) to re-check; the other rows are kept")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / "issue18_mutations.json"
    chosen = {int(n) for n in args.only.split(",")} if args.only else set(range(1, len(BUGS) + 1))
    kept = {row["behaviour"]: row for row in json.loads(out.read_text())["rows"]} if args.only and out.is_file() else {}
    rows = []
    for number, (behaviour, module, old, new) in enumerate(BUGS, start=1):
        if number not in chosen and behaviour in kept:
            rows.append(kept[behaviour])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "src"
            shutil.copytree(ROOT / "src", source)
            path = source / Path(module).relative_to("src")
            text = path.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"{module}: the text to change is not there exactly once: {old!r}")
            path.write_text(text.replace(old, new))
            passed, failed, seconds = run_fast_suite(source)
        rows.append({"behaviour": behaviour, "module": module, "suite": "passes" if passed else "fails (caught)",
                     "first_failing_test": failed, "seconds": round(seconds, 1), "loadavg": round(os.getloadavg()[0], 1),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(f"{rows[-1]['suite']:15} {behaviour}  {failed}", flush=True)
    out.write_text(json.dumps({"loadavg": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    caught = sum(row["suite"] != "passes" for row in rows)
    print(f"{caught} of {len(rows)} bugs caught by the fast suite")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
