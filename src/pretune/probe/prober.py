"""A frozen LM asked one relation as a cloze, answering with any token of its vocabulary.

The cloze layers composed: a pattern rendered by the LM kind (`cloze.lm`), one of the prompt
inputs (`cloze.inputs`), and the vocabulary readout (`cloze.readouts.vocabulary`: the full output
layer where the answer is read):

- `pattern`  the manual prompt as written (PET's zero-shot cloze; nothing trains);
- `soft`     a template with soft tokens (`[P*3] {text} [P*3] {mask}`, anchors `[P:word]`) produced
             by a prompt encoder (lstm | mlp | none), as in P-tuning;
- `prefix`   the manual prompt plus trained keys and values at every layer (deep prompts).

A causal LM reads the object as the next token, so its prompt must end with the mask. The body
never trains: its parameters are frozen and it stays in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import Backbone
from ..cloze.inputs import INPUTS, build_input
from ..cloze.lm import ClozeBatch, language_model
from ..cloze.pattern import Pattern, PatternRenderer
from ..cloze.readouts import VocabularyReadout
from ..cloze.soft import ENCODERS
from ..errors import UserError
from .facts import Fact

MAX_LENGTH = 64  # a subject and a short prompt: LAMA's longest fit comfortably


@dataclass(frozen=True)
class ProbeSetup:
    pattern: str
    input: str = "pattern"  # pattern | soft | prefix
    encoder: str = "lstm"  # soft only
    prefix_length: int = 16  # prefix only


class Prober(nn.Module):
    """Facts in, logits over the vocabulary out, through one pattern and one prompt input."""

    def __init__(self, backbone: Backbone, setup: ProbeSetup):
        super().__init__()
        self.lm = language_model(backbone)  # refuses a model without an LM head
        if setup.input not in INPUTS:
            raise UserError(f"unknown prompt input '{setup.input}' (choose one of {', '.join(INPUTS)})")
        if setup.encoder not in ENCODERS:
            raise UserError(f"unknown --encoder '{setup.encoder}' (choose one of {', '.join(ENCODERS)})")
        self.backbone, self.setup = backbone, setup
        self.pattern = Pattern.parse(setup.pattern)
        _check_pattern(self.pattern, self.lm.name, setup.input)
        self.model = backbone.model
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()
        self.renderer = PatternRenderer(self.pattern, backbone.tokenizer, self.lm.closing_special_tokens)
        self.lm.check_pattern(self.pattern, self.renderer)
        self.input = build_input(setup.input, backbone, self.model, self.pattern, setup.encoder, setup.prefix_length,
                                 reparam=False)
        self.readout = VocabularyReadout(None, self.lm, backbone)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # the body is frozen: no dropout, its answers must not change
        return self

    @property
    def answer_lead(self) -> str:
        """The spaces before the mask: the object is read as " Paris" after a space."""
        return self.pattern.mask.lead

    def encode(self, text: str) -> list[int]:
        return self.renderer.encode(text)

    # -- facts to a batch ---------------------------------------------------------------------
    def item(self, fact: Fact, token: int) -> dict:
        rendered = self.renderer.render({"text": fact.subject}, MAX_LENGTH - self.input.positions_taken, reserved=1)
        if self.lm.name == "causal" and not rendered.prefix:
            raise UserError(f"pattern '{self.pattern}': a causal LM needs text before {{mask}}")
        return {"rendered": rendered, "target": token}

    def collate(self, items: list[dict]) -> tuple[ClozeBatch, torch.Tensor]:
        """The readout's batch (one target per fact, where the answer is read) and the objects' ids."""
        return self.readout.batch([item["rendered"] for item in items]), torch.tensor([i["target"] for i in items])

    # -- scoring --------------------------------------------------------------------------------
    def forward(self, batch: ClozeBatch) -> torch.Tensor:
        """Logits [B, V] over the whole vocabulary at each fact's answer position."""
        batch = batch.to(self.model.device)
        inputs = self.input.body_inputs(self.model, batch)
        hidden = self.backbone.body(**inputs, **self.lm.body_arguments).last_hidden_state
        return self.readout.scores(hidden, batch).float()

    # -- what trains and what is saved -------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.input.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What a trained probe adds to the frozen model, after materialising its encoder."""
        self.input.materialize()
        return {f"{self.input.slot}.{name}": p.detach().clone() for name, p in self.input.named_parameters()}


def _check_pattern(pattern: Pattern, kind: str, prompt_input: str) -> None:
    if "text_pair" in pattern.fields:
        raise UserError(f"pattern '{pattern}': a relation has one subject, {{text}}; {{text_pair}} has no value")
    if kind == "causal" and not pattern.ends_with_mask:
        raise UserError(f"pattern '{pattern}': a causal LM reads the object as the next token, so the pattern must end with {{mask}}")
    if prompt_input == "soft" and not pattern.soft_tokens:
        raise UserError(f"pattern '{pattern}' has no soft tokens to train: add some ('[P*3] {{text}} [P*3] {{mask}}')")
    if prompt_input != "soft" and pattern.soft_tokens:
        raise UserError(f"pattern '{pattern}' has soft tokens: they train only with --method ptuning")
