"""One benchmark run in a process of its own, so that its peak memory is its own and a crash
costs only that run:

    python -m pretune.bench.worker JOB.json RECORD.json

JOB.json names the arm, the `RunSpec` and the torch thread count; RECORD.json receives the arm's
measurements plus what only the process can tell: peak resident memory, wall time, and the
machine's load average before and after (timings taken on a busy machine are inflated; the load
shows which ones).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..errors import UserError


def run_job(job: dict) -> dict:
    import torch

    from .arms import ARMS, RunSpec

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    arm, spec = ARMS[job["arm"]], RunSpec(**job["spec"])
    if job.get("options") is not None:  # a variant of the arm (the speed benchmark's equal step budget)
        arm = replace(arm, options=job["options"])
    load_before, start = os.getloadavg(), time.perf_counter()
    measured = arm.runner(arm, spec)
    return {
        **measured,
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mib": _peak_rss_mib(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "device": str(spec.device),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": _versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KiB on Linux, bytes on macOS


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("pretune", "torch", "transformers", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list[str]) -> int:
    from ..console import quiet_libraries
    from ..runs import atomic_write_text

    job_path, record_path = map(Path, argv)
    quiet_libraries()
    try:
        record = run_job(json.loads(job_path.read_text()))
    except UserError as error:
        print(f"pretune: error: {error}", file=sys.stderr)
        return UserError.exit_code
    atomic_write_text(record_path, json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
