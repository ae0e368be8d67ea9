"""The few-shot benchmark (LM-BFF protocol): tasks x seeds x arms -> records, tables and plots.

For each seed s, every arm trains on the split `K-s` (train and a dev set of the same size; or K per
class sampled with seed s with `--shots`) with training seed s, keeps its best state on dev and is
evaluated once on test. Each (arm, seed) runs in its own process (`bench_worker`): its peak memory
is its own and a crash costs only that run.

The output folder holds `results.json` (every run, rewritten atomically after each one), and the
report made from it (`report`). Run the same command again and only the missing runs run: a run is
keyed by (task, model, arm, seed, and a hash of the arm's options and the shared protocol). Runs of
an arm whose options have changed since stay in results.json; the report shows the current ones only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from ..runs import atomic_write_text
from .arms import ARMS, LM_BFF_SEEDS, Arm, RunSpec, resolve_arms

RESULTS = "results.json"
FORMAT = 1


@dataclass
class BenchConfig:
    tasks: list[str]
    out: Path
    model: str = "smollm2-135m"
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: list(LM_BFF_SEEDS))
    steps: int = 100
    batch_size: int = 8
    eval_batch_size: int = 32
    shots: int | None = None
    device: str = "auto"
    dtype: str = "auto"  # resolved once for the machine: runs are keyed by the concrete format
    threads: int | None = None  # torch threads in each run; None: torch's default
    jobs: int = 1  # runs at once, each in its own process (their timings then share the machine)
    text_field: str = "text"
    pair_field: str | None = "text_pair"
    label_field: str = "label"
    test_sample: int | None = None  # a fixed random sample of this many test examples, shared by every arm and seed
    progress: bool = True
    report_only: bool = False  # write the report from what results.json holds; run nothing

    def spec(self, task: str, seed: int) -> RunSpec:
        return RunSpec(
            task=task, model=self.model, seed=seed, steps=self.steps, batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size, shots=self.shots, device=self.device, text_field=self.text_field,
            pair_field=self.pair_field, label_field=self.label_field, dtype=self.concrete_dtype(),
            test_sample=self.test_sample,
        )

    def concrete_dtype(self) -> str:
        from ..precision import resolve_precision
        from ..training.trainer import resolve_device

        return resolve_precision(self.dtype, resolve_device(self.device)).name


@dataclass(frozen=True)
class PlannedRun:
    arm: Arm
    spec: RunSpec

    @property
    def key(self) -> dict:
        return run_key(self.arm, self.spec)


def run_key(arm: Arm, spec: RunSpec) -> dict:
    defining = json.dumps({"arm": arm.options, "protocol": spec.protocol()}, sort_keys=True)
    return {"task": spec.task, "model": spec.model, "arm": arm.name, "seed": spec.seed,
            "config": hashlib.sha1(defining.encode()).hexdigest()[:10]}


def _key_tuple(key: dict) -> tuple:
    return (key["task"], key["model"], key["arm"], key["seed"], key["config"])


# ---------------------------------------------------------------- results.json


class ResultsStore:
    """results.json: finished runs and the last failure of runs still to redo; written atomically."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / RESULTS
        self.data = {"format": FORMAT, "runs": [], "failures": []}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise UserError(f"{self.path}:{error.lineno}: malformed JSON ({error.msg}); move it away to start afresh") from None

    @classmethod
    def open(cls, folder: Path) -> ResultsStore:
        """The store of an output folder: new, or an earlier benchmark's to continue. A folder holding
        anything else is refused, so that nothing the user had is overwritten."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder}: exists and is not a folder")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / RESULTS).is_file():
            raise UserError(f"--out {folder}: the folder is not empty and holds no {RESULTS}; choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder)

    def _done(self) -> set:
        return {_key_tuple(run["key"]) for run in self.data["runs"]}

    def has(self, key: dict) -> bool:
        return _key_tuple(key) in self._done()

    def runs(self) -> list[dict]:
        return list(self.data["runs"])

    def add(self, record: dict) -> None:
        self._forget_failure(record["key"])
        self.data["runs"].append(record)
        self.save()

    def fail(self, key: dict, error: str, log: str) -> None:
        self._forget_failure(key)
        self.data["failures"].append({"key": key, "error": error, "log": log})
        self.save()

    def _forget_failure(self, key: dict) -> None:
        self.data["failures"] = [f for f in self.data["failures"] if _key_tuple(f["key"]) != _key_tuple(key)]

    def save(self) -> None:
        # One line per run and failure: a run's predictions would otherwise take a line each, and a
        # benchmark that adds runs shows in a diff as the lines it adds.
        lists = {name: ",\n".join(json.dumps(item) for item in self.data[name]) for name in ("runs", "failures")}
        text = (f'{{"format": {json.dumps(self.data["format"])},\n"runs": [\n{lists["runs"]}\n],\n'
                f'"failures": [\n{lists["failures"]}\n]}}\n')
        atomic_write_text(self.path, text)


# ---------------------------------------------------------------- the protocol


@dataclass
class BenchOutcome:
    folder: Path
    ran: int
    reused: int
    failed: list[dict]
    skipped_arms: dict[str, str]
    missing: int = 0  # planned runs not in the results (failed, or not run with --report-only)


def plan(config: BenchConfig) -> tuple[list[PlannedRun], dict[str, str]]:
    """Every (task, seed, arm) to run, after checking the data of each (task, seed) and the model."""
    if not config.tasks:
        raise UserError("bench needs at least one --task")
    if not config.seeds:
        raise UserError("bench needs at least one seed in --seeds")
    if len(set(config.seeds)) != len(config.seeds):
        raise UserError(f"--seeds names a seed twice: {', '.join(map(str, config.seeds))}")
    if min(config.steps, config.batch_size, config.eval_batch_size, config.jobs) < 1:
        raise UserError("--steps, --batch-size, --eval-batch-size and --jobs must be at least 1")
    if config.test_sample is not None and config.test_sample < 1:
        raise UserError(f"--test-sample must be at least 1, got {config.test_sample}")
    arms, skipped = resolve_arms(config.arms)
    if not arms:
        raise UserError(f"none of the arms in --methods can run here: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    from ..backbones import detect_kind, resolve

    detect_kind(resolve(config.model))  # a missing model (or an unreachable hub id) is one clear line before anything runs
    for model in {arm.model for arm in arms if arm.model}:
        detect_kind(resolve(model))  # an anchor's own model too
    runs = []
    for task in config.tasks:
        for seed in config.seeds:
            spec = config.spec(task, seed)
            regression = _check_task(spec)
            for arm in arms:
                if regression and arm.classification_only:
                    skipped[f"{arm.name} on {task}"] = "classification only; the task is a regression"
                else:
                    runs.append(PlannedRun(arm, arm.spec_for(spec)))
    return runs, skipped


def _check_task(spec: RunSpec) -> bool:
    """Whether the task is a regression; a task without a test split is refused."""
    task = spec.load_task()
    if not task.test:
        raise UserError(f"task {spec.task} has no test split: the benchmark evaluates every run on test")
    return task.is_regression


def run_bench(config: BenchConfig) -> BenchOutcome:
    """Run what is missing from the output folder, then write the report from all it holds."""
    from . import report

    runs, skipped = plan(config)
    store = ResultsStore.open(config.out)
    pending = [] if config.report_only else [run for run in runs if not store.has(run.key)]
    failed = []
    bar = tqdm(total=len(pending), desc="bench", unit="run", disable=not config.progress or not pending)
    # Worker threads only wait on the run processes; results.json is written here, one run at a time.
    with ThreadPoolExecutor(max_workers=config.jobs) as pool:
        futures = {pool.submit(_run_isolated, run, config): run for run in pending}
        try:
            for future in as_completed(futures):
                run, (record, error) = futures[future], future.result()
                if record is None:
                    log = str(_log_path(config.out, run.key))
                    store.fail(run.key, error, log)
                    failed.append({"key": run.key, "error": error, "log": log})
                    bar.write(f"{_label(run)}: FAILED ({error}); log: {log}")
                else:
                    store.add(record)
                    bar.write(f"{_label(run)}: {_summary_line(record)}")
                bar.update(1)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # runs not started yet never start
            raise
    bar.close()
    # The report covers every registered arm run under this protocol, not only this invocation's:
    # adding one arm to a finished benchmark reports it beside the others.
    reported = [run_key(arm, arm.spec_for(config.spec(task, seed))) for task in config.tasks for seed in config.seeds
                for arm in ARMS.values()]
    report.write_report(config.out, store.runs(), reported, arms={name: ARMS[name].describe() for name in ARMS},
                        skipped=skipped, failures=failed)
    done, ran = sum(store.has(run.key) for run in runs), len(pending) - len(failed)
    return BenchOutcome(Path(config.out), ran, done - ran, failed, skipped, missing=len(runs) - done)


def _run_isolated(run: PlannedRun, config: BenchConfig) -> tuple[dict | None, str]:
    measured, error = run_in_worker(run.arm.name, run.spec, _log_path(config.out, run.key), config.threads)
    if measured is None:
        return None, error
    metric = next(iter(measured["test"]))  # the task's own metric comes first
    return {"key": run.key, "metric": metric, "arm_info": run.arm.describe(), "protocol": run.spec.protocol(),
            "bench_model": config.model, **measured}, ""


def run_in_worker(arm: str, spec: RunSpec, log_path: Path, threads: int | None = None,
                  options: dict | None = None) -> tuple[dict | None, str]:
    """Run one arm on one spec in a fresh Python process (`bench_worker`): (its measurements, "") or
    (None, why it failed). The process's output goes to `log_path`, kept only when it failed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    job = {"arm": arm, "spec": asdict(spec), "threads": threads, "options": options}
    with tempfile.TemporaryDirectory(prefix="pretune-bench-job-") as scratch:
        job_path, record_path = Path(scratch) / "job.json", Path(scratch) / "record.json"
        job_path.write_text(json.dumps(job))
        with open(log_path, "w", encoding="utf-8") as log:
            done = subprocess.run(
                [sys.executable, "-m", "pretune.bench.worker", str(job_path), str(record_path)],
                stdout=log, stderr=subprocess.STDOUT, env=_worker_environment(),
            )
        if done.returncode != 0 or not record_path.is_file():
            return None, _last_line(log_path) or f"exit code {done.returncode}"
        measured = json.loads(record_path.read_text())
    log_path.unlink()  # a finished run's log holds nothing its record does not
    _remove_if_empty(log_path.parent)
    return measured, ""


def _worker_environment() -> dict:
    """The parent's environment, with this pretune importable even where it is not installed."""
    env = dict(os.environ)
    source = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = source + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _log_path(out: Path, key: dict) -> Path:
    return Path(out) / "logs" / f"{key['task']}-{key['arm']}-seed{key['seed']}-{key['config']}.log".replace("/", "_")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _label(run: PlannedRun) -> str:
    return f"{run.spec.task} {run.arm.name} seed {run.spec.seed}"


def _summary_line(record: dict) -> str:
    metric = record["metric"]
    return (f"test {metric} {record['test'][metric]:.4f}, train {record['train_seconds']:.1f} s, "
            f"eval {record['eval_examples_per_second']:.1f} ex/s, peak {record['peak_rss_mib']:.0f} MiB")
