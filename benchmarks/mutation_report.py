"""The mutation score of the last `mutmut run` (see `make mutation`), per module, with every
surviving mutant: its diff, and why it is equivalent (from benchmarks/mutation_equivalent.json),
or "not explained" when no test pins it yet.

    python benchmarks/mutation_report.py    # after `mutmut run`; writes benchmarks/results/mutation.{md,json}
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"
# Survivors that are not equivalent but change only what a slow test runs (FSDP2 sharding on CPUs):
# the fast suite mutmut runs cannot see them; counted apart, never as equivalent.
SLOW_ONLY = ROOT / "benchmarks" / "mutation_slow_only.json"
COMMAND = ("make mutation: python benchmarks/mutation_state.py run --max-children 2 (mutmut run, resumed from "
           "benchmarks/results/mutation_state.json), then python benchmarks/mutation_report.py")
DETECTED = ("killed", "timeout", "segfault")  # the suite noticed the mutant (a hang or a crash is noticed too)
UNDECIDED = ("not checked", "check was interrupted by user", "skipped")  # not run: left out of the score


def statuses() -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    out = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status
    return found


def module_of(mutant: str) -> str:
    return mutant.split(".x_")[0].split(".xǁ")[0]


def diff(mutant: str) -> str:
    shown = subprocess.run([*MUTMUT, "show", mutant], cwd=ROOT, capture_output=True, text=True).stdout
    return "\n".join(line for line in shown.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---")))


# Survivors whose change cannot alter what the suite's platform (CPU) computes, recognised by their
# diff: (what the mutant changes, why it is equivalent). Anything else needs a named reason in
# benchmarks/mutation_equivalent.json, or a test.
EQUIVALENT_PATTERNS = [
    (r"device=None|\.to\(None[,)]|device=[a-z_.]*device\b.*->|non_blocking=(False|None)",
     "where a tensor lives, or a copy hint: on CPU (the suite's platform) nothing moves; CUDA placement is "
     "checked on a lent GPU, not by the CPU suite"),
    # the original reads "inf" in lower case: only another spelling is the mutant's
    (r'float\("[-+]?(INF|Inf)"\)', "float() reads infinity in any letter case"),
]


PROGRESS = re.compile(r",?\s*\b(progress|desc)(=\w+)?\b|,\s*None\b|,\s*(?=\))")
# Default values in a signature that change no result: (what stands for every value, why).
DEFAULTS = [
    (re.compile(r'\b(progress: bool = \w+|desc: str = "[^"]*")'), "a default of whether a progress bar shows "
     "(or its label): nothing computed depends on it"),
    (re.compile(r"\bbatch_size: int = \d+"), "a default scoring batch size: how many examples go through the model "
     "at once changes memory and speed, not the scores"),
]


def equivalence(change: str) -> str | None:
    removed = [line[1:] for line in change.splitlines() if line.startswith("-")]
    added = [line[1:] for line in change.splitlines() if line.startswith("+")]
    if removed and [PROGRESS.sub("", line) for line in removed] == [PROGRESS.sub("", line) for line in added]:
        return "changes only whether a progress bar shows (or its label): nothing computed depends on it"
    for default, reason in DEFAULTS:
        if removed != added and [default.sub("?", x) for x in removed] == [default.sub("?", x) for x in added]:
            return reason
    for pattern, reason in EQUIVALENT_PATTERNS:
        if any(re.search(pattern, line) for line in added) and not any(re.search(pattern, line) for line in removed):
            return reason
    return None


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> int:
    found = statuses()
    if not found:
        raise SystemExit("no mutation results: run `mutmut run` first (make mutation)")
    reasons = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}
    slow = {name: f"not equivalent, reached only by a slow test: {why}"
            for name, why in (json.loads(SLOW_ONLY.read_text()) if SLOW_ONLY.is_file() else {}).items()}
    diffs = {name: diff(name) for name, status in found.items() if status in ("survived", "no tests", "suspicious")}
    for name, change in diffs.items():
        if name not in reasons and equivalence(change):
            reasons[name] = equivalence(change)
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in found.items():
        per_module[module_of(name)][status] += 1
    total = Counter(found.values())
    tested = sum(n for status, n in total.items() if status not in UNDECIDED)
    detected = sum(total[s] for s in DETECTED)
    survivors = sorted(name for name, status in found.items() if status in ("survived", "no tests", "suspicious"))
    explained = [name for name in survivors if name in reasons]
    slow_only = [name for name in survivors if name in slow and name not in reasons]
    reasons.update({name: slow[name] for name in slow_only})
    score = detected / tested if tested else 0.0
    adjusted = (detected + len(explained)) / tested if tested else 0.0
    summary = {
        "command": COMMAND,
        "mutants": len(found), "tested": tested, "detected": detected, "score": score,
        "score_counting_equivalent_as_killed": adjusted, "slow_only": len(slow_only), "statuses": dict(total),
        "per_module": {m: dict(c) for m, c in sorted(per_module.items())},
        "survivors": {name: reasons.get(name, "not explained") for name in survivors},
        "cpu": cpu_name(), "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    results = ROOT / "benchmarks" / "results"
    (results / "mutation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "mutation.md").write_text(markdown(summary, survivors, reasons, diffs))
    print(f"mutation score: {detected}/{tested} = {score:.1%} of the mutants tested were killed "
          f"({len(found) - tested} not tested); {len(survivors)} survived, {len(explained)} of them explained as equivalent, "
          f"{len(slow_only)} reached only by slow tests")
    return 0


def markdown(summary: dict, survivors: list[str], reasons: dict, diffs: dict) -> str:
    lines = [
        "# Mutation testing: training loop, scoring, verbalizers, recipes, parameter groups", "",
        f"Command: `{summary['command']}`. Tool: mutmut 3.8.1; each mutant is run against the tests of the fast "
        "suite (`-m \"not slow\"`) that reach the mutated function.", "",
        f"Measured {summary['date']} on {summary['cpu']}, load average {summary['loadavg'][0]:.1f} at the end.", "",
        f"**Score: {summary['detected']} of {summary['tested']} mutants tested were killed = {summary['score']:.1%}**. "
        f"Counting the survivors explained below as equivalent: {summary['score_counting_equivalent_as_killed']:.1%}. "
        f"{summary.get('slow_only', 0)} other survivors are not equivalent but change only what a slow test runs "
        "(FSDP2 sharding, `tests/test_sharded.py`), which the fast suite cannot reach; they count as survivors.", "",
        *partial_note(summary),
        "What is mutated: the modules of `[tool.mutmut] only_mutate` in pyproject.toml (training loop, recipes, "
        "masked/causal LM layout, label-word scoring, verbalizers and their readout, the method contract with its "
        "parameter groups). Lines that only log or draw a progress bar are not mutated (`do_not_mutate_patterns`). "
        "The tests: the fast (`not slow`) tests of the files in `pytest_add_cli_args_test_selection`; for each mutant "
        "mutmut runs those of them that reach the mutated function.", "",
        "| module | " + " | ".join(sorted(summary["statuses"])) + " | killed % |",
        "|---|" + "---|" * (len(summary["statuses"]) + 1),
    ]
    for module, counts in summary["per_module"].items():
        tested = sum(n for s, n in counts.items() if s not in UNDECIDED)
        killed = sum(counts.get(s, 0) for s in DETECTED)
        cells = " | ".join(str(counts.get(s, 0)) for s in sorted(summary["statuses"]))
        lines.append(f"| `{module}` | {cells} | {100 * killed / tested:.0f} |" if tested else f"| `{module}` | {cells} | – |")
    lines += issue_table()
    lines += ["", f"## Surviving mutants ({len(survivors)})", ""]
    for name in survivors:
        lines += [f"- `{name}`: {reasons.get(name, '**not explained**: no test pins this yet')}", "", "  ```diff"]
        lines += [f"  {line}" for line in diffs[name].splitlines()] + ["  ```", ""]
    return "\n".join(lines) + "\n"


def partial_note(summary: dict) -> list[str]:
    untested = summary["mutants"] - summary["tested"]
    if not untested:
        return []
    return [f"**Partial result**: {untested} of the {summary['mutants']} generated mutants were not tested yet "
            "(the run was stopped at the deadline); `make mutation` continues from here (the verdicts are saved in "
            "benchmarks/results/mutation_state.json) and tests only those, and those of functions changed since.", ""]


def issue_table() -> list[str]:
    """The issue's nine bugs (and the ignored --weight-decay), from benchmarks/issue18_mutations.py."""
    path = ROOT / "benchmarks" / "results" / "issue18_mutations.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = ["", "## The bugs of issue 18, re-applied (`python benchmarks/issue18_mutations.py`)", "",
             f"Each applied to a copy of the source, then the whole fast suite run (load average at the end "
             f"{data['loadavg'][0]:.1f}).", "", "| changed behaviour | fast suite | first failing test |", "|---|---|---|"]
    lines += [f"| {r['behaviour']} | {r['suite']} | `{r['first_failing_test']}` |" for r in data["rows"]]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
