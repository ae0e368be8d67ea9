"""Frozen-body feature cache vs. re-encoding every step: same model, data, head and seed.

    python benchmarks/head_cache.py [--model smollm2-135m] [--epochs 20] [--threads 1]

Both arms train the same linear head on few-shot SST-2 (split 16-42, 32 sentences, batch 8) with a
frozen body; one encodes each sentence once and trains on the cached features, the other runs the
body on every batch. Prints both times, the speed-up ratio, and both test accuracies (which must
agree: the features are the same).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from pretune.backbones import load_backbone
from pretune.data import load_task
from pretune.methods import HeadConfig, HeadMethod
from pretune.training.evaluation import task_metrics
from pretune.training.trainer import TrainConfig, Trainer, set_seed
from pretune.tuning import BodyTraining


def arm(backbone, task, cache: bool, epochs: int) -> dict:
    set_seed(42)
    method = HeadMethod(backbone, task, HeadConfig(cache=cache), BodyTraining.parse("frozen"))
    start = time.perf_counter()
    train = method.featurize(task.train, progress=False)
    trainer = Trainer(TrainConfig(epochs=epochs, lr=1e-3, seed=42, eval_every=10**9), progress=False, log=None)
    trainer.fit(method, train, task.targets(task.train))
    seconds = time.perf_counter() - start  # featurizing (the one encoding pass, if cached) + training
    test = method.featurize(task.test, progress=False)
    accuracy = task_metrics(task, method.score_items(test), task.targets(task.test))["accuracy"]
    return {"cache": cache, "train_seconds": seconds, "test_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "head_cache.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("sst-2", split_seed=42)
    backbone = load_backbone(args.model)
    load_before = os.getloadavg()[0]
    cached = arm(backbone, task, cache=True, epochs=args.epochs)
    live = arm(backbone, task, cache=False, epochs=args.epochs)
    ratio = live["train_seconds"] / cached["train_seconds"]
    load = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    result = {
        "model": args.model, "task": "sst-2 (16-42)", "epochs": args.epochs, "batch_size": 8,
        "torch_threads": torch.get_num_threads(), "cached": cached, "re_encoding": live, "speedup": ratio,
        "load_average_1min": load, "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"model {args.model}, few-shot SST-2 (32 train, 872 test), {args.epochs} epochs, batch 8, frozen body")
    print(f"cached features : train {cached['train_seconds']:8.2f} s   test accuracy {cached['test_accuracy']:.4f}")
    print(f"re-encoding     : train {live['train_seconds']:8.2f} s   test accuracy {live['test_accuracy']:.4f}")
    print(f"speed-up of the cache: {ratio:.1f}x")
    print(f"1-minute load average {load['before']:.1f} before, {load['after']:.1f} after, on {load['cpus']} CPUs; "
          f"torch threads {torch.get_num_threads()}; {result['date']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
