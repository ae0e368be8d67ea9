"""mutmut's verdicts kept in the repository, so that `make mutation` goes on where the last session
stopped, in a fresh clone too, and tests again only the mutants whose function changed.

mutmut 3.8.1 keeps, per mutated source file, `mutants/<file>.meta`: the exit code of every mutant
tested and a hash of every function's source (its AST, so moving a function changes nothing). Before
it runs, it regenerates the mutants of a file and keeps the exit codes of the functions whose hash
is unchanged; a changed or new function's mutants are tested again. mutants/ is not committed (it
holds a mutated copy of every source file), so this script saves the .meta contents into
benchmarks/results/mutation_state.json and writes them back into a fresh mutants/.

What is written back: every kill (a kill stands while the function is unchanged), and the survivors
that the last report (benchmarks/results/mutation.json) explains as equivalent. Every other mutant
(untested, a survivor no reason explains, one that no test reached or that was interrupted) is left
to the run: the tests may have changed since, and those are the mutants a new test is written for.
The test-to-function map (mutants/mutmut-stats.json) is neither kept nor reused: restore deletes it, and
mutmut collects it again with one run of the selected tests, so a test that now reaches another function
is seen, and a run in a used checkout does what one in a fresh clone does (with that map mutmut would
also throw every verdict away when the test selection in pyproject.toml changed).

    python benchmarks/mutation_state.py run [--max-children N]   # restore, mutmut run (saving each minute), save
    python benchmarks/mutation_state.py save                     # mutants/ -> benchmarks/results/mutation_state.json
    python benchmarks/mutation_state.py restore                  # benchmarks/results/mutation_state.json -> mutants/
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "benchmarks" / "results" / "mutation_state.json"
REPORT = ROOT / "benchmarks" / "results" / "mutation.json"
MUTANTS = ROOT / "mutants"
SAVE_EVERY_S = 60  # mutmut writes a .meta after each mutant: at most a minute of work is lost to a kill
# mutmut's exit codes that are verdicts (stats.status_by_exit_code): killed, timeout, segfault, survived.
# Not kept: 2 (interrupted), 5/33 (no tests), 34 (skipped), 35 and unknown codes (suspicious: a worker
# killed with the run, say), 37 (type check: not configured here).
KILLS = {1, 3, 36, -24, 24, 152, 255, -11, -9}
SURVIVED = 0


def meta_path(source: str) -> Path:
    return MUTANTS / f"{source}.meta"


def read_meta(path: Path) -> dict | None:
    """A .meta file's contents, or None while mutmut is rewriting it (read between its open and its dump)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def verdicts_of(meta: dict) -> dict:
    """What is worth keeping of one file's meta: function hashes, and exit code and duration of each decided mutant."""
    decided = {k: code for k, code in meta["exit_code_by_key"].items() if code in KILLS or code == SURVIVED}
    return {
        "hash_by_function_name": dict(sorted(meta["hash_by_function_name"].items())),
        "exit_code_by_key": dict(sorted(decided.items())),
        "durations_by_key": {k: round(meta["durations_by_key"][k], 2) for k in sorted(decided) if k in meta["durations_by_key"]},
    }


def load_state() -> dict[str, dict]:
    return json.loads(STATE.read_text())["files"] if STATE.is_file() else {}


def save() -> int:
    """Merge mutants/**/*.meta into the state file; files not mutated this time keep their saved entry,
    files no longer in the repository lose theirs. Returns how many verdicts the state holds."""
    files = {source: entry for source, entry in load_state().items() if (ROOT / source).is_file()}
    for path in sorted(MUTANTS.rglob("*.py.meta")):
        meta = read_meta(path)
        if meta is not None:
            files[path.relative_to(MUTANTS).as_posix().removesuffix(".meta")] = verdicts_of(meta)
    body = {"tool": "mutmut 3.8.1", "files": dict(sorted(files.items()))}
    partial = STATE.with_suffix(".json.partial")
    partial.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
    partial.replace(STATE)  # never a half-written state, even if the run is killed while saving
    return sum(len(entry["exit_code_by_key"]) for entry in files.values())


def explained_survivors() -> set[str]:
    """Survivors the last report gives a reason for (equivalent mutants): no test can kill them."""
    if not REPORT.is_file():
        return set()
    return {name for name, reason in json.loads(REPORT.read_text())["survivors"].items() if reason != "not explained"}


def restore() -> tuple[int, int]:
    """Write the saved verdicts into mutants/ for files that have no .meta there yet; then, in every
    .meta, clear the verdicts a run must redo; drop mutmut's test map. Returns (files restored, verdicts cleared)."""
    (MUTANTS / "mutmut-stats.json").unlink(missing_ok=True)
    restored = 0
    for source, entry in load_state().items():
        path = meta_path(source)
        if path.exists() or not (ROOT / source).is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # no mutated copy older than its .meta: mutmut would take it as current and not merge the verdicts
        (MUTANTS / source).unlink(missing_ok=True)
        meta = {"exit_code_by_key": entry["exit_code_by_key"], "hash_by_function_name": entry["hash_by_function_name"],
                "type_check_error_by_key": {}, "durations_by_key": entry["durations_by_key"],
                "estimated_durations_by_key": {}}
        path.write_text(json.dumps(meta, indent=4))
        restored += 1
    return restored, clear_undecided(explained_survivors())


def clear_undecided(explained: set[str]) -> int:
    """Set to None (mutmut's "not checked") every verdict but a kill or an explained survivor."""
    cleared = 0
    for path in MUTANTS.rglob("*.py.meta"):
        meta = read_meta(path)
        if meta is None:
            continue
        codes = meta["exit_code_by_key"]
        redo = [k for k, code in codes.items()
                if code is not None and not (code in KILLS or (code == SURVIVED and k in explained))]
        if redo:
            codes.update(dict.fromkeys(redo, None))
            path.write_text(json.dumps(meta, indent=4))
            cleared += len(redo)
    return cleared


def run(max_children: int) -> int:
    """restore, then `mutmut run`, saving the verdicts every SAVE_EVERY_S seconds and when it ends,
    however it ends (Ctrl-C and SIGTERM are passed on to mutmut, which stops its workers)."""
    restored, cleared = restore()
    print(f"mutation state: {restored} file(s) restored from {STATE.relative_to(ROOT)}, {cleared} verdict(s) to redo",
          flush=True)
    mutmut = Path(sys.executable).parent / "mutmut"
    # A command started in the background (`make mutation &`, nohup) ignores SIGINT, and so would mutmut:
    # a handled SIGINT is reset to the default by exec, where Python turns it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen([str(mutmut), "run", "--max-children", str(max_children)], cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGINT))
    try:
        while True:
            try:
                code = process.wait(timeout=SAVE_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                save()
            except KeyboardInterrupt:  # the terminal sent SIGINT to mutmut too
                code = process.wait()
                break
    finally:
        kept = save()
    print(f"mutation state: {kept} verdict(s) saved to {STATE.relative_to(ROOT)}")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "save", "restore"])
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="mutmut's parallel workers")
    args = parser.parse_args()
    os.chdir(ROOT)  # mutmut reads pyproject.toml and writes mutants/ in the current directory
    if args.action == "save":
        print(f"{save()} verdict(s) saved to {STATE.relative_to(ROOT)}")
        return 0
    if args.action == "restore":
        restored, cleared = restore()
        print(f"{restored} file(s) restored into mutants/, {cleared} verdict(s) to redo")
        return 0
    return run(args.max_children)


if __name__ == "__main__":
    raise SystemExit(main())
