"""PEFT baselines that read the verbalizer of a causal LM, beside `baselines`' classification heads.

The classification-head baselines read a new, randomly initialised head, so "PET beats PEFT" there
partly measures the readout. These arms give PEFT the same readout as pretune's cloze methods:
`AutoModelForCausalLM`, `get_peft_model` with task type CAUSAL_LM (prompt tuning or LoRA), the
task's built-in causal pattern rendered as text up to its mask, and the logits of the label words'
first tokens at the last position (left padding puts every row's last token there; only that
position's logits are computed). Each label reads its first verbalizer word. Everything else (data,
steps, schedule, dev selection, number format) is `baselines.run_with`'s protocol.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..errors import UserError
from . import baselines


def run_lm_baseline(arm, spec) -> dict:
    """Train and evaluate one label-word PEFT arm on one (task, seed)."""
    return baselines.run_with(arm, spec, _label_word_model, _encode_pattern)


def causal_prompt(task) -> tuple[str, dict[str, str]]:
    """The task's built-in causal pattern source and each label's first word."""
    from ..cloze.prompt import built_in_prompts

    prompts = built_in_prompts(task.name, "causal")
    if not prompts:
        raise UserError(f"task {task.name} has no built-in causal-LM prompt for the label-word PEFT arms")
    prompt = prompts[0]
    return prompt.pattern.source, {label: prompt.verbalizer.words[label][0] for label in task.labels}


def render(source: str, text: str, text_pair: str | None) -> tuple[str, str]:
    """(the pattern's text up to the mask, the space a label word takes after it): `Sentiment: {mask}`
    becomes `Sentiment:` and a label word ` positive`, the way the causal LM's tokenizer splits words."""
    before = source[: source.index("{mask}")].replace("{text}", text).replace("{text_pair}", text_pair or "")
    stripped = before.rstrip(" ")
    return stripped, " " if stripped != before else ""


def label_token_ids(tokenizer, task, words: dict[str, str], space: str) -> list[int]:
    ids = [tokenizer.encode(space + words[label], add_special_tokens=False)[0] for label in task.labels]
    if len(set(ids)) != len(ids):
        raise UserError(f"task {task.name}: two label words start with the same token ({words})")
    return ids


class LabelWordReadout:
    """A PEFT causal LM seen as a classifier: `.logits` are the label words' next-token logits."""

    def __init__(self, model, label_ids: list[int]):
        self.model, self.label_ids = model, label_ids

    def __call__(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1).logits
        return SimpleNamespace(logits=logits[:, -1, self.label_ids])

    def __getattr__(self, name):  # train/eval/parameters/to/state dicts/save_pretrained: the PEFT model's
        return getattr(self.model, name)


def _label_word_model(folder: str, task, tokenizer, options: dict, causal: bool):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    if not causal:
        raise UserError("the label-word PEFT arms read the next token of a causal LM; this model is not one")
    if task.is_regression:
        raise UserError(f"the label-word PEFT arms classify; task {task.name} is a regression task")
    source, words = causal_prompt(task)
    _, space = render(source, "", "")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_model = get_peft_model(model, baselines._peft_config(options, task_type="CAUSAL_LM"))
    return LabelWordReadout(peft_model, label_token_ids(tokenizer, task, words, space))


def _encode_pattern(tokenizer, examples, task) -> list[dict]:
    source, _ = causal_prompt(task)
    rows = []
    for example, target in zip(examples, task.targets(examples)):
        text, _ = render(source, example.text, example.text_pair)
        # Truncated from the left: the pattern's end, where the label is read, must stay.
        ids = tokenizer.encode(text)[-baselines.MAX_LENGTH :]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": target})
    return rows
