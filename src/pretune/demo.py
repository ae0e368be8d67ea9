"""`pretune demo`: the main job in small — few-shot SST-2 on the default model, method by method.

With the benchmark data beside the project (../shared/data) it uses the LM-BFF few-shot SST-2
split (seed 42, 32 training sentences, 872 test sentences). On a machine without it, it uses the
small labelled example set that ships with pretune, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .api import RunConfig, train_run
from .backbones import DEFAULT_MODEL
from .data import find_benchmark_task
from .train import TrainConfig

PACKAGED_EXAMPLES = Path(__file__).parent / "examples" / "sentiment"


@dataclass
class DemoArm:
    label: str
    method: str
    train: str | None = None
    options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


# The methods the demo compares, side by side on one trainer.
ARMS = [
    DemoArm("head (frozen body, linear head on cached features)", "head", "frozen", training={"epochs": 100}),
]


def demo_data() -> tuple[str, str]:
    """(task spec, a sentence saying which data it is)."""
    shared = find_benchmark_task("fewshot/sst-2")
    if shared is not None:
        return str(shared), f"few-shot SST-2 from {shared} (LM-BFF split 16-42: 32 train, 32 dev, 872 test)"
    return str(PACKAGED_EXAMPLES), (
        f"the example set shipped with pretune ({PACKAGED_EXAMPLES}: 16 train, 16 dev, 32 test sentences); "
        "the SST-2 benchmark data (../shared/data) is not on this machine"
    )


def run_demo(model: str | None = None, out: str = "runs/demo", quick: bool = False) -> list[dict]:
    model = model or DEFAULT_MODEL
    task, about = (str(PACKAGED_EXAMPLES), "the packaged example set (quick mode)") if quick else demo_data()
    print(f"pretune demo: model {model}; data: {about}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for arm in ARMS:
        config = RunConfig(
            task=task,
            model=model,
            method=arm.method,
            train=arm.train,
            method_options=dict(arm.options),
            split_seed=42,
            training=TrainConfig(seed=42, **arm.training),
        )
        print(f"\n== {arm.label}")
        folder = Path(out) / f"{stamp}-{arm.method}"
        result = train_run(config, out=folder)
        metrics = result.metrics
        rows.append(
            {
                "method": arm.label,
                "accuracy": metrics["test"]["accuracy"],
                "trainable": metrics["trainable_parameters"],
                "seconds": metrics["train"]["seconds"],
                "folder": str(folder),
            }
        )
    _print_table(rows)
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'method':<55} {'test acc':>8} {'trainable':>12} {'train s':>8}  run folder")
    for row in rows:
        print(
            f"{row['method']:<55} {row['accuracy']:>8.1%} {row['trainable']:>12,} {row['seconds']:>8.1f}  {row['folder']}"
        )
