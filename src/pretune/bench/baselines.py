"""The baselines: what a user gets today from transformers and PEFT on the same model and data.

Written the way those libraries' own examples do it (PEFT's `examples/sequence_classification`):
`AutoModelForSequenceClassification` from the model's folder, `get_peft_model` with task type
SEQ_CLS (which also trains the new classification head), AdamW on the trainable parameters, a
linear schedule with 6% warm-up, batches padded by the tokenizer. Learning rates are those
examples' (LoRA 3e-4, P_TUNING and PROMPT_TUNING 1e-3) and 2e-5 for full fine-tuning.

The protocol is pretune's: the same split, seed, step budget and batch size, evaluation on dev at
the same steps, the best state on dev kept, then one evaluation on test. In a reduced number format
(`spec.dtype` bfloat16 or float16) a baseline computes as pretune does, so that the two compare at
the same format: frozen weights held in it, trainable ones in float32, forward passes under autocast.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import metrics as task_metrics

MAX_LENGTH = 256  # pretune's default input limit, so both sides see the same text
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def run_baseline(arm, spec) -> dict:
    """Train and evaluate one baseline arm on one (task, seed); returns the measured fields of a record."""
    return run_with(arm, spec, _model, _encode)


def run_with(arm, spec, make_model, encode) -> dict:
    """The baselines' protocol around a model: `make_model(folder, task, tokenizer, options, causal)`
    returns a module whose output has `.logits` [batch, labels]; `encode(tokenizer, examples, task)`
    the rows it reads (`baselines_lm` reads label words of a causal LM through this)."""
    from transformers import set_seed

    task = spec.load_task()  # (first: it imports pretune's modules in their working order)
    from ..backbones import detect_kind, resolve
    from ..precision import Precision
    from ..training.trainer import resolve_device

    folder = resolve(spec.model)
    causal = detect_kind(folder) == "causal"
    set_seed(spec.seed)
    tokenizer = _tokenizer(folder, causal)
    model = make_model(folder, task, tokenizer, arm.options, causal)
    precision = Precision(spec.dtype)
    precision.prepare(model)
    device = resolve_device(spec.device)
    model.to(device)
    autocast = lambda: precision.autocast(device.type)  # noqa: E731

    start = time.perf_counter()
    train = encode(tokenizer, task.train, task)
    dev = encode(tokenizer, task.dev, task) if task.dev else None
    history, seen, best = _fit(model, tokenizer, train, dev, task, spec, arm.options["lr"], device, autocast)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    test = encode(tokenizer, task.test, task)
    test_metrics, predictions = _evaluate(model, tokenizer, test, task, spec.eval_batch_size, device, autocast)
    eval_rate = len(task.test) / (time.perf_counter() - start)
    return {
        "dev": best["dev"],
        "test": test_metrics,
        "eval_examples_per_second": eval_rate,
        "train_seconds": train_seconds,
        "train_examples_per_second": seen / train_seconds,
        "steps": spec.steps,
        "best_step": best["step"],
        "history": history,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "adapter_bytes": _saved_bytes(model),
        "labels": task.labels,
        "predictions": predictions.tolist(),
        "targets": list(task.targets(task.test)),
    }


# ---------------------------------------------------------------- model and data, as a user would set them up


def _tokenizer(folder: str, causal: bool):
    from transformers import AutoTokenizer

    # PEFT's examples pad decoder models on the left: the classification head reads the last
    # position, and with virtual tokens in front the model cannot find the last real token itself.
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left" if causal else "right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model(folder: str, task, tokenizer, options: dict, causal: bool):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=task.num_labels, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # causal LMs ship without one; the head needs it
    if options.get("freeze_body"):
        model.base_model.requires_grad_(False)  # only the new classification head trains
    if options["peft"] is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, _peft_config(options))


def _peft_config(options: dict, task_type: str = "SEQ_CLS"):
    from peft import LoraConfig, PromptEncoderConfig, PromptEncoderReparameterizationType, PromptTuningConfig

    kind = options["peft"]
    if kind == "lora":
        return LoraConfig(task_type=task_type, r=options["r"], lora_alpha=options["alpha"], lora_dropout=options["dropout"])
    if kind == "p_tuning":
        return PromptEncoderConfig(
            task_type=task_type, num_virtual_tokens=options["virtual_tokens"], encoder_hidden_size=options["encoder_hidden"],
            encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
        )
    if kind == "prompt_tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=options["virtual_tokens"])
    raise ValueError(f"unknown PEFT method {kind}")


def _encode(tokenizer, examples, task) -> list[dict]:
    targets = task.targets(examples)
    rows = []
    for example, target in zip(examples, targets):
        encoded = tokenizer(example.text, example.text_pair, truncation=True, max_length=MAX_LENGTH)
        rows.append({**encoded, "labels": target})
    return rows


def _collate(tokenizer, rows: list[dict]):
    return tokenizer.pad(rows, padding="longest", return_tensors="pt")


# ---------------------------------------------------------------- training and evaluation


def _fit(model, tokenizer, train: list[dict], dev, task, spec, lr: float, device, autocast):
    """AdamW + linear schedule for `spec.steps` steps; evaluates dev at pretune's trainer's steps and
    keeps the best trainable state. Returns (history, examples seen, best)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=WEIGHT_DECAY)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_RATIO * spec.steps), spec.steps)
    generator = torch.Generator().manual_seed(spec.seed)
    loader = DataLoader(train, batch_size=spec.batch_size, shuffle=True, generator=generator,
                        collate_fn=lambda rows: _collate(tokenizer, rows))
    per_epoch = math.ceil(len(train) / spec.batch_size)
    eval_every = max(per_epoch, math.ceil(spec.steps / 10))  # as pretune's trainer does by default
    history, losses, seen, step = [], [], 0, 0
    best = {"metric": -math.inf, "step": None, "dev": None, "state": None}
    model.train()
    while step < spec.steps:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            loss = _loss(logits, batch["labels"], task)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, seen = step + 1, seen + len(batch["labels"])
            losses.append(loss.item())
            if step % eval_every == 0 or step == spec.steps:
                history.append(_checkpoint(model, tokenizer, dev, task, spec, step, losses[-eval_every:], best, device,
                                           autocast))
                model.train()
            if step == spec.steps:
                break
    if best["state"] is not None:
        model.load_state_dict(best["state"], strict=False)
    model.eval()
    return history, seen, best


def _checkpoint(model, tokenizer, dev, task, spec, step, losses, best, device, autocast) -> dict:
    row = {"step": step, "loss": float(np.mean(losses))}
    if dev is None:
        return row
    dev_metrics, _ = _evaluate(model, tokenizer, dev, task, spec.eval_batch_size, device, autocast)
    row.update({f"dev_{k}": v for k, v in dev_metrics.items()})
    if dev_metrics[task.metric] > best["metric"]:
        state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        best.update(metric=dev_metrics[task.metric], step=step, dev=dev_metrics, state=state)
    return row


def _evaluate(model, tokenizer, rows: list[dict], task, batch_size: int, device, autocast):
    """(metrics, predictions) in the data's order, batch after batch as a DataLoader gives them."""
    import torch

    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = _collate(tokenizer, rows[start : start + batch_size])
            batch.pop("labels")
            with autocast():
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            outputs.append(logits)
    logits = torch.cat(outputs)
    predictions = logits.view(-1).numpy() if task.is_regression else logits.argmax(dim=-1).numpy()
    targets = np.asarray([row["labels"] for row in rows])
    return task_metrics.all_metrics(task.metric, predictions, targets, task.num_labels), predictions


def _loss(logits, labels, task):
    """The loss transformers' sequence-classification models compute, in float32 (as the model does
    in float32; under autocast its logits would be bfloat16)."""
    import torch.nn.functional as F

    logits = logits.float()
    if task.is_regression:
        return F.mse_loss(logits.view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))


def _saved_bytes(model) -> int:
    """What the arm must keep to predict, as `save_pretrained` writes it: the adapter and the new head
    for PEFT, the whole model for full fine-tuning (weight files only)."""
    with tempfile.TemporaryDirectory(prefix="pretune-baseline-") as folder:
        model.save_pretrained(folder)
        return sum(path.stat().st_size for path in Path(folder).rglob("*.safetensors"))
