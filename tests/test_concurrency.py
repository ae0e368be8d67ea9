"""One writer per run folder. Two trainings started at once on one --out, and a second writer
(--overwrite, --resume) or a reader (predict) arriving while a run is being written, end with one
consistent run and clean refusals: never a folder with one run's configuration and another's
weights. Each scenario is repeated with several seeds; the processes are real (`python -m pretune`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pretune.errors import UserError
from pretune.locks import lock_for_reading
from refusals import assert_refused, claims_complete, run_main

pytestmark = pytest.mark.slow
TRAIN = ["train", "--model", "bert-tiny", "--quiet", "--device", "cpu"]


def pretune(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pretune", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_consistent(run, task_folder, tmp_path, method="head") -> None:
    """Complete, its files those of one run (checksums hold), and predict reproduces its predictions."""
    assert claims_complete(run)
    assert f"method: {method}" in (run / "config.yaml").read_text()
    output = tmp_path / f"predict-{time.monotonic_ns()}.jsonl"
    assert run_main(["predict", "--run", run, "--input", task_folder / "test.jsonl", "--output", output]) == 0
    predicted = [json.loads(line)["prediction"] for line in output.read_text().splitlines()]
    saved = [json.loads(line)["prediction"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert predicted == saved


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_trainings_started_at_once_on_one_folder(seed, tmp_path, task_folder, capsys):
    run = tmp_path / "run"
    common = ["--task", task_folder, "--steps", 20, "--out", run]
    seeds = [seed, seed + 100]  # which run won shows in config.yaml
    processes = [pretune(*TRAIN, *common, "--seed", s) for s in seeds]
    results = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = seeds[0] if results[0][0] == 0 else seeds[1]
    _, refusal = next(result for result in results if result[0] == 2)
    assert len(refusal.strip().splitlines()) == 1 and "Traceback" not in refusal
    assert "is in use by another pretune process" in refusal or "already exists" in refusal, refusal
    capsys.readouterr()
    assert f"seed: {winner}\n" in (run / "config.yaml").read_text()
    assert_consistent(run, task_folder, tmp_path)


def _wait_until_writing(process, run) -> None:
    """Until the process holds the folder's lock and has written its config.yaml."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (run / "config.yaml").is_file():
            try:
                lock = lock_for_reading(run)
            except UserError:
                return  # held by the writer
            if lock is not None:
                lock.release()
        time.sleep(0.01)
    raise AssertionError("the run never started writing")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_second_writer_or_a_reader_during_a_run_is_refused(seed, tmp_path, task_folder, capsys):
    """While the first run is held still (SIGSTOP) in the middle of training, --overwrite with
    another method, --resume and predict are refused; the first run then completes, consistent."""
    run = tmp_path / "run"
    first = pretune(*TRAIN, "--task", task_folder, "--steps", 200, "--checkpoint-every", 5, "--seed", seed, "--out", run)
    _wait_until_writing(first, run)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        overwrite = [*TRAIN, "--task", task_folder, "--method", "pet", "--steps", 1, "--out", run, "--overwrite"]
        in_use = f"is in use by another pretune process (pid {first.pid})"
        assert_refused(run_main(overwrite), capsys.readouterr().err, in_use)
        assert_refused(run_main(["train", "--resume", run, "--quiet"]), capsys.readouterr().err, in_use)
        predict = ["predict", "--run", run, "--input", task_folder / "test.jsonl"]
        assert_refused(run_main(predict), capsys.readouterr().err, "is being written by another pretune process")
        done = subprocess.run([sys.executable, "-m", "pretune", *map(str, overwrite)], capture_output=True, text=True)
        assert_refused(done.returncode, done.stderr, in_use)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    assert_consistent(run, task_folder, tmp_path, "head")
