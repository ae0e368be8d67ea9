"""What training through accelerate costs per step in one process: the trainer with its accelerate
engine vs. the same trainer with a plain-torch engine (backward, clipping, no wrapping), on a linear
head over cached features (almost no compute, so the loop's own cost shows; a real model's step takes
10-1000x longer).

    python benchmarks/engine_overhead.py [--steps 400] [--repeats 5]

Both arms train the same head from the same start with the same batches, rates and clipping, and must
end with the same weights (printed). Prints steps/s of each arm (best of the repeats) and
their ratio, and writes benchmarks/results/engine_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from pretune.backbones import load_backbone
from pretune.data import Example, Task
from pretune.methods import HeadConfig, HeadMethod
from pretune.training import trainer as trainer_module
from pretune.training.engine import Engine
from pretune.training.trainer import TrainConfig, Trainer, set_seed
from pretune.tuning import BodyTraining

WORDS = "good great fine bad awful poor".split()


def head(backbone, task) -> HeadMethod:
    set_seed(42)
    return HeadMethod(backbone, task, HeadConfig(dropout=0.0), BodyTraining.parse("frozen"))


class PlainEngine:
    """The engine's interface in plain torch: what the trainer did before accelerate."""

    def __init__(self, grad_accum: int, log_with=None, project_dir=None):
        self.grad_accum, self.accelerator = grad_accum, None

    def prepare(self, method, optimizer):
        return method, optimizer

    def micro_batch(self, model):
        return contextlib.nullcontext()

    def backward(self, loss) -> None:
        (loss / self.grad_accum).backward()

    def clip(self, params, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def release(self) -> None:
        pass


def train_seconds(method, items, targets, config: TrainConfig, engine) -> float:
    trainer_module.Engine = engine
    start = time.perf_counter()
    Trainer(config, progress=False, log=None).fit(method, items, targets)
    return time.perf_counter() - start


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    examples = [Example(f"{a} and {b}", label="pos" if WORDS.index(a) < 3 else "neg") for a in WORDS for b in WORDS]
    task = Task("toy", ["neg", "pos"], "accuracy", train=examples)
    backbone = load_backbone("bert-tiny")
    config = TrainConfig(steps=args.steps, batch_size=4, lr=0.01, eval_every=10**9)
    targets = task.targets(task.train)
    times, weights = {"engine": [], "plain": []}, {}
    for _ in range(args.repeats):  # interleaved: load changes hit both arms alike
        for name, engine in (("engine", Engine), ("plain", PlainEngine)):
            method = head(backbone, task)
            items = method.featurize(task.train, progress=False)
            times[name].append(train_seconds(method, items, targets, config, engine))
            weights[name] = method.trainable_state_dict()
    same = all(torch.equal(weights["engine"][k], weights["plain"][k]) for k in weights["plain"])
    rates = {name: args.steps / min(seconds) for name, seconds in times.items()}
    result = {
        "steps": args.steps, "repeats": args.repeats, "steps_per_second": rates,
        "engine_over_plain": rates["engine"] / rates["plain"], "same_weights": same,
        "cpu": cpu_name(), "loadavg": os.getloadavg(), "threads": 1,
    }
    for name, rate in rates.items():
        print(f"{name:7s} {rate:7.0f} steps/s (best of {args.repeats})")
    print(f"engine / plain: {result['engine_over_plain']:.2f}; same final weights: {same}; "
          f"CPU {result['cpu']}, load {os.getloadavg()}")
    out = Path(__file__).parent / "results" / "engine_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
