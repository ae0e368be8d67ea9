"""How a prompt enters the model: the pattern's tokens alone, soft tokens among them, or prefixes.

An input is an `nn.Module` (its parameters, if any, train as the method's prompt) with

    slot                the attribute a cloze method holds it under (it names the saved weights)
    allows_soft_tokens  whether a pattern may hold soft tokens [P] for it to fill
    positions_taken     model positions it occupies besides the rendered text
    body_inputs(model, batch)  the keyword arguments the body reads for a batch
    materialize()       after training: replace any encoder by what it computes now

- `pattern`  the rendered token ids as they are (PET);
- `soft`     soft tokens from a prompt encoder, through `inputs_embeds` (P-tuning, prompt tuning; `soft`);
- `prefix`   trained keys and values at every layer, through the body's cache (deep prompts; `prefix`).

A new input is a class with those members and one line in `build_input`.
"""

from __future__ import annotations

from torch import nn

from .pattern import Pattern
from .prefix import build_prefix
from .soft import SoftPrompt, initial_embeddings

INPUTS = ("pattern", "soft", "prefix")


class PatternInput(nn.Module):
    """The rendered pattern's token ids, nothing trained."""

    slot = "pattern_input"
    allows_soft_tokens = False
    positions_taken = 0

    def body_inputs(self, model: nn.Module, batch) -> dict:
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def materialize(self) -> None:
        """Nothing to materialise."""


def build_input(kind: str, backbone, model: nn.Module, pattern: Pattern, encoder: str, prompt_length: int | None,
                reparam: bool) -> nn.Module:
    """The input of a cloze method over `model` (the body as it trains)."""
    if kind == "pattern":
        return PatternInput()
    if kind == "soft":
        initial = initial_embeddings(pattern.soft_tokens, model.get_input_embeddings(), backbone.tokenizer)
        return SoftPrompt(initial, encoder)
    if kind == "prefix":
        return build_prefix(backbone, model, prompt_length, reparam)
    raise ValueError(f"unknown input '{kind}' (choose one of {', '.join(INPUTS)})")
