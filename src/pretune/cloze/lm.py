"""PET's auxiliary language-modelling loss: keep the LM an LM while it learns the task.

Unlabelled examples are rendered through the pattern, as in training, and the model does its
pre-training task on them: a masked LM restores 15% of the tokens (never the special tokens or
the pattern's mask, whose answer is unknown), a causal LM predicts every next token. The method
adds the weighted loss to each training step (PET: 1e-4 of the loss).
"""

from __future__ import annotations

import torch

from .pattern import PatternRenderer, Rendered

MASKED_FRACTION = 0.15
IGNORED = -100  # the label transformers' losses skip


def language_modelling_batch(
    rendered: list[Rendered], kind: str, renderer: PatternRenderer, mask_id: int | None, pad_id: int
) -> dict[str, torch.Tensor] | None:
    """input_ids, attention_mask and labels for the model's own LM loss; None when nothing is to predict."""
    rows = [_masked_row(r, renderer, mask_id) if kind == "mlm" else _causal_row(r) for r in rendered]
    longest = max(len(tokens) for tokens, _ in rows)
    batch = {
        "input_ids": torch.full((len(rows), longest), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long),
        "labels": torch.full((len(rows), longest), IGNORED, dtype=torch.long),
    }
    for i, (tokens, labels) in enumerate(rows):
        batch["input_ids"][i, : len(tokens)] = torch.tensor(tokens)
        batch["attention_mask"][i, : len(tokens)] = 1
        batch["labels"][i, : len(labels)] = torch.tensor(labels)
    return batch if (batch["labels"] != IGNORED).any() else None


def _masked_row(rendered: Rendered, renderer: PatternRenderer, mask_id: int) -> tuple[list[int], list[int]]:
    tokens = rendered.prefix + [mask_id] + rendered.suffix
    fixed = set(range(len(renderer.opening))) | {len(rendered.prefix)}
    fixed |= set(range(len(tokens) - len(renderer.closing), len(tokens)))
    fixed |= set(rendered.soft_in_prefix) | {len(rendered.prefix) + 1 + i for i in rendered.soft_in_suffix}
    candidates = [i for i in range(len(tokens)) if i not in fixed]
    labels = [IGNORED] * len(tokens)
    if not candidates:
        return tokens, labels
    count = max(1, round(MASKED_FRACTION * len(candidates)))
    chosen = torch.randperm(len(candidates))[:count].tolist()
    for position in (candidates[c] for c in chosen):
        labels[position] = tokens[position]
        tokens[position] = mask_id
    return tokens, labels


def _causal_row(rendered: Rendered) -> tuple[list[int], list[int]]:
    """The rendered text without the mask; every token a label (the model shifts them itself)."""
    tokens = rendered.prefix + rendered.suffix
    soft = set(rendered.soft_in_prefix) | {len(rendered.prefix) + i for i in rendered.soft_in_suffix}
    return tokens, [IGNORED if i in soft else t for i, t in enumerate(tokens)]
