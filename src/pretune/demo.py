"""`pretune demo`: the main job in small — few-shot SST-2 on the default model, the three ways side by side.

With the benchmark data beside the project (../shared/data) it uses the LM-BFF few-shot SST-2
split (seed 42, 32 training sentences, 872 test sentences). On a machine without it, it uses the
small labelled example set that ships with pretune, and says so.

The arms: a linear head on the frozen body (classic fine-tuning), PET's pattern zero-shot and
fine-tuned (prompt-based fine-tuning), and P-tuning (soft tokens in front of the same pattern, body
frozen). Every prompt arm uses SST-2's built-in pattern and label words for the model's kind, so
the comparison is between ways of tuning, not between prompts. The table is printed and written
beside the run folders as demo-<time>.json and .md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .api import RunConfig, evaluate_untrained, train_run
from .backbones import DEFAULT_MODEL, Backbone, load_backbone
from .cloze.prompt import built_in_prompts
from .data import find_benchmark_task
from .training.trainer import TrainConfig

PACKAGED_EXAMPLES = Path(__file__).parent / "examples" / "sentiment"
QUICK_STEPS = 8  # --quick (the tests): a few steps show every arm works end to end
PROMPT_TASK = "sst-2"  # the built-in prompts the demo's prompt arms use (the example set is movie reviews too)


@dataclass
class DemoArm:
    label: str
    method: str
    train: str = "frozen"
    options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    untrained: bool = False


# The methods the demo compares, side by side on one trainer. Step budgets are small so that the
# demo stays minutes on a laptop CPU; `pretune bench` runs the full protocol.
ARMS = [
    DemoArm("classic: linear head, frozen body (cached)", "head", training={"epochs": 100}),
    DemoArm("PET zero-shot: pattern + label words", "pet", untrained=True),
    DemoArm("P-tuning: 4 soft tokens + LSTM, frozen body", "ptuning", options={"prompt_length": 4},
            training={"steps": 40}),
    DemoArm("PET fine-tuned: whole body, 40 steps", "pet", train="full", training={"steps": 40, "body_lr": 2e-5}),
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
    backbone = load_backbone(model)
    prompt = built_in_prompts(PROMPT_TASK, backbone.kind)
    prompt_options = {"patterns": [prompt[0].pattern.source], "verbalizer": str(prompt[0].verbalizer)} if prompt else {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for arm in _arms_for(backbone.kind):
        options = {**(prompt_options if arm.method != "head" else {}), **arm.options}
        training = {**arm.training, "steps": QUICK_STEPS} if quick and "steps" in arm.training else arm.training
        config = RunConfig(task=task, model=model, method=arm.method, train=arm.train, method_options=options,
                           split_seed=42, training=TrainConfig(seed=42, **training))
        print(f"\n== {arm.label}")
        rows.append(_run_arm(arm, config, Path(out) / f"{stamp}-{_slug(arm)}", backbone))
    _print_table(rows)
    _write_summary(Path(out) / f"demo-{stamp}", model, about, rows)
    return rows


def _arms_for(kind: str) -> list[DemoArm]:
    """The arms this kind of model can run: the prompt arms read the model's LM head, which an
    encoder-only model (kind "encoder") does not have."""
    if kind != "encoder":
        return ARMS
    skipped = [arm.label for arm in ARMS if arm.method != "head"]
    print(f"note: this model has no LM head, so only the head arm runs (skipped: {'; '.join(skipped)})")
    return [arm for arm in ARMS if arm.method == "head"]


def _run_arm(arm: DemoArm, config: RunConfig, folder: Path, backbone: Backbone) -> dict:
    # Arms that leave the body frozen share the loaded model; an arm that trains the body loads its own.
    shared = backbone if arm.train == "frozen" else None
    if arm.untrained:
        metrics, trainable, seconds, where = evaluate_untrained(config, backbone=shared), 0, 0.0, "-"
    else:
        metrics = train_run(config, out=folder, backbone=shared).metrics
        trainable, seconds, where = metrics["trainable_parameters"], metrics["train"]["seconds"], str(folder)
    return {"method": arm.label, "accuracy": metrics["test"]["accuracy"], "trainable": trainable, "seconds": seconds,
            "folder": where}


def _slug(arm: DemoArm) -> str:
    return f"{arm.method}-{arm.train}"


def _table_lines(rows: list[dict]) -> list[str]:
    lines = ["| method | test accuracy | trainable parameters | train seconds | run folder |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['accuracy']:.1%} | {r['trainable']:,} | {r['seconds']:.1f} | {r['folder']} |"
              for r in rows]
    return lines


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'method':<46} {'test acc':>8} {'trainable':>12} {'train s':>8}  run folder")
    for row in rows:
        print(f"{row['method']:<46} {row['accuracy']:>8.1%} {row['trainable']:>12,} {row['seconds']:>8.1f}  {row['folder']}")
    best = max(rows, key=lambda r: r["accuracy"])
    print(f"\nbest on test: {best['method']} ({best['accuracy']:.1%})")


def _write_summary(base: Path, model: str, about: str, rows: list[dict]) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps({"model": model, "data": about, "arms": rows}, indent=2) + "\n")
    text = [f"# pretune demo: {model}", "", f"Data: {about}.", "", *_table_lines(rows), ""]
    base.with_suffix(".md").write_text("\n".join(text))
    print(f"summary: {base.with_suffix('.md')} and .json")
