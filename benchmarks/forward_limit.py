"""What the speed benchmark measures inside its own process: a prompt method's evaluation against a bare
forward pass of the same model on the same token batches, a profile of one frozen-body training step
before and after float32 attention, and where start-up and padding cost time.

Used by `speed_memory.py`; every figure here is measured when it runs, alternating the two sides of a
comparison so that a machine whose load changes affects both alike.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from pretune.bench.arms import ARMS, RunSpec

ROUNDS = 2  # alternations of each comparison; the best time of each side counts


def _method(spec: RunSpec, arm: str):
    from pretune.api import build_method

    options = ARMS[arm].options
    config = spec.run_config(options["method"], options.get("method_options"), options.get("train"))
    task = spec.load_task()
    method = build_method(config, task)
    method.finalize()  # as after training: the prompt materialised, no encoder
    return method.eval(), task


def _batches(method, items: list[dict], batch_size: int) -> list[dict]:
    """The token batches `train.score` builds: items sorted by length, in chunks of `batch_size`."""
    order = sorted(range(len(items)), key=lambda i: method.item_length(items[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [method.collate([items[i] for i in chunk]) for chunk in chunks]


def evaluation_against_bare_forward(spec: RunSpec, arm: str) -> dict:
    """Tokens/s of the method's whole evaluation (featurize + score) and of `body(ids, mask)` alone
    on the batches it reads, at the spec's dtype."""
    method, task = _method(spec, arm)
    examples = task.test
    items = method.featurize(examples, progress=False)
    batches = _batches(method, items, spec.eval_batch_size)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    padded = sum(b.attention_mask.numel() for b in batches)
    body = method.backbone.body

    def pretune_evaluation() -> None:
        method.score_items(method.featurize(examples, progress=False), spec.eval_batch_size)

    @torch.inference_mode()
    def bare_forward() -> None:
        for batch in batches:
            body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)

    pretune_evaluation()  # warm-up: first-call allocations and kernel selection
    best = {"pretune": float("inf"), "bare": float("inf")}
    for _ in range(ROUNDS):
        for name, run in (("bare", bare_forward), ("pretune", pretune_evaluation)):
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        "arm": arm, "dtype": spec.dtype, "examples": len(examples), "tokens": tokens, "padded_tokens": padded,
        "pretune_tokens_per_second": tokens / best["pretune"], "bare_tokens_per_second": tokens / best["bare"],
        "ratio": best["bare"] / best["pretune"],
    }


def training_padding(spec: RunSpec, arm: str, steps: int) -> dict:
    """The fraction of padding in the token positions of the training batches the trainer draws: each
    batch run whole, and cut by length as the trainer runs it (`training.packing`)."""
    from pretune.training.packing import cut_by_length
    from pretune.training.trainer import BatchOrder

    method, task = _method(spec, arm)
    method.train()
    items = method.featurize(task.train, progress=False)
    order, real, whole, cut, passes = BatchOrder(len(items), spec.batch_size, spec.seed), 0, 0, 0, 0
    for _ in range(steps):
        indices = order.next()
        mask = method.collate([items[i] for i in indices]).attention_mask
        real, whole = real + int(mask.sum()), whole + mask.numel()
        for part in cut_by_length(method, indices, items):
            cut += method.collate([items[i] for i in part]).attention_mask.numel()
            passes += 1
    return {"whole": 1 - real / whole, "cut": 1 - real / cut, "passes_per_batch": passes / steps}


def attention_profile(spec: RunSpec, arm: str) -> dict:
    """One frozen-body training step (batch of the spec's size) profiled with CPU torch's bfloat16
    attention kernels (before) and with attention in float32 while training (after, pretune's default)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from pretune.training.trainer import loss_fn, target_tensor

    method, task = _method(spec, arm)
    method.train()
    items = method.featurize(task.train[: spec.batch_size], progress=False)
    targets = target_tensor(task, task.targets(task.train[: spec.batch_size]))
    batch = method.collate(items)

    def step() -> None:
        with method.autocast():
            scores = method(batch)
        loss_fn(task, scores, targets).backward()

    variants = {"before": sdpa_attention_forward, "after": ALL_ATTENTION_FUNCTIONS["sdpa"]}
    result = {}
    try:
        step()
        seconds = {name: [] for name in variants}
        for _ in range(ROUNDS + 1):
            for name, attention in variants.items():
                ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
        for name, attention in variants.items():
            ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                step()
            events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events)
            top = [{"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total}
                   for e in events[:5]]
            result[name] = {"step_seconds_best": min(seconds[name]), "step_seconds": seconds[name], "top_ops": top}
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = variants["after"]
    return result


STARTUP = """
import time; start = time.perf_counter()
import torch, transformers  # noqa
imported = time.perf_counter()
from pretune.backbones import load_backbone
load_backbone({model!r})
print(imported - start, time.perf_counter() - imported)
"""


def startup_seconds(model: str) -> dict:
    """A fresh process: seconds to import torch and transformers, then to load the model."""
    done = subprocess.run([sys.executable, "-c", STARTUP.format(model=model)], capture_output=True, text=True, check=True)
    imports, load = map(float, done.stdout.split()[-2:])
    return {"import_seconds": imports, "load_seconds": load}
