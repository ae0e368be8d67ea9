"""A frozen LM asked one relation as a cloze, answering with any token of its vocabulary.

The input side is one of pretune's three prompt inputs, composed with the open-vocabulary
readout (`LabelWordScorer.vocabulary_logits`: the full output layer at the answer's position):

- `none`    the manual prompt as written (PET's zero-shot cloze; nothing trains);
- `soft`    a template with soft tokens (`[P*3] {text} [P*3] {mask}`, anchors `[P:word]`) produced
            by a prompt encoder (lstm | mlp | none), as in P-tuning;
- `prefix`  the manual prompt plus trained keys and values at every layer (deep prompts).

The answer's position is the mask for a masked LM, and the last token before the mask for a
causal LM (which reads the object as the next token, so its prompt must end with the mask).
The body never trains: its parameters are frozen and it stays in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import Backbone
from ..errors import UserError
from ..methods.deep_prompt import starting_tokens
from ..patterns import Pattern, PatternRenderer
from ..prefix import Prefix, cache_argument, model_key_values
from ..prompt_encoders import ENCODERS, SoftPrompt, initial_embeddings
from ..scoring import LabelWordScorer, require_language_model
from .facts import Fact

INPUTS = ("none", "soft", "prefix")
MAX_LENGTH = 64  # a subject and a short prompt: LAMA's longest fit comfortably


@dataclass(frozen=True)
class ProbeSetup:
    pattern: str
    input: str = "none"  # none | soft | prefix
    encoder: str = "lstm"  # soft only
    prefix_length: int = 16  # prefix only


class Prober(nn.Module):
    """Facts in, logits over the vocabulary out, through one pattern and one prompt input."""

    def __init__(self, backbone: Backbone, setup: ProbeSetup):
        super().__init__()
        require_language_model(backbone)
        if setup.input not in INPUTS:
            raise UserError(f"unknown prompt input '{setup.input}' (choose one of {', '.join(INPUTS)})")
        if setup.encoder not in ENCODERS:
            raise UserError(f"unknown --encoder '{setup.encoder}' (choose one of {', '.join(ENCODERS)})")
        self.backbone, self.setup, self.kind = backbone, setup, backbone.kind
        self.pattern = Pattern.parse(setup.pattern)
        _check_pattern(self.pattern, self.kind, setup.input)
        self.model = backbone.model
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()
        tokenizer = backbone.tokenizer
        self.renderer = PatternRenderer(self.pattern, tokenizer, closing_special_tokens=self.kind == "mlm")
        self.scorer = LabelWordScorer(backbone)
        self.mask_id, self.pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        if self.kind == "mlm" and self.mask_id is None:
            raise UserError(f"model '{backbone.name}' is a masked LM without a mask token")
        embeddings = self.model.get_input_embeddings()
        self.soft_prompt = None
        if self.pattern.soft_tokens:
            self.soft_prompt = SoftPrompt(initial_embeddings(self.pattern.soft_tokens, embeddings, tokenizer), setup.encoder)
        self.prefix = None
        if setup.input == "prefix":
            tokens = starting_tokens(tokenizer, setup.prefix_length).to(self.model.device)
            self.prefix = Prefix(model_key_values(backbone.body, self.model.config, tokens), backbone.hidden_size)
            self.cache_argument = cache_argument(backbone.body)

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
        rendered = self.renderer.render({"text": fact.subject}, MAX_LENGTH, reserved=1)
        soft = list(rendered.soft_in_prefix)
        if self.kind == "mlm":
            ids = rendered.prefix + [self.mask_id] + rendered.suffix
            soft += [len(rendered.prefix) + 1 + i for i in rendered.soft_in_suffix]
            read = len(rendered.prefix)
        else:
            if not rendered.prefix:
                raise UserError(f"pattern '{self.pattern}': a causal LM needs text before {{mask}}")
            ids, read = rendered.prefix, len(rendered.prefix) - 1
        return {"ids": ids, "soft": soft, "read": read, "target": token}

    def collate(self, items: list[dict]) -> dict:
        longest = max(len(item["ids"]) for item in items)
        input_ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        soft_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, item in enumerate(items):  # right padding: positions stay those of an unpadded row
            input_ids[row, : len(item["ids"])] = torch.tensor(item["ids"])
            attention_mask[row, : len(item["ids"])] = 1
            soft_mask[row, item["soft"]] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "soft_mask": soft_mask,
            "read": torch.tensor([item["read"] for item in items]),
            "target": torch.tensor([item["target"] for item in items]),
        }

    # -- scoring --------------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Logits [B, V] over the whole vocabulary at each fact's answer position."""
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        hidden = self.scorer.hidden_states(batch, self._input_embeddings(batch), **self._prefix_inputs(batch))
        read = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["read"]]
        return self.scorer.vocabulary_logits(read).float()

    def _input_embeddings(self, batch: dict) -> torch.Tensor | None:
        if self.soft_prompt is None:
            return None
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        soft = batch["soft_mask"]
        tokens = self.soft_prompt().to(embeds.dtype)
        return embeds.masked_scatter(soft.unsqueeze(-1), tokens.repeat(soft.shape[0], 1))

    def _prefix_inputs(self, batch: dict) -> dict:
        if self.prefix is None:
            return {}
        mask = batch["attention_mask"]
        rows = mask.shape[0]
        cache = self.prefix.cache(rows, self.model.config, self.model.get_input_embeddings().weight.dtype)
        extended = torch.cat([mask.new_ones(rows, self.prefix.length), mask], dim=1)
        return {self.cache_argument: cache, "attention_mask": extended}

    # -- what trains and what is saved -------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith(("model.", "backbone.")) and p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What a trained probe adds to the frozen model, after materialising its encoder."""
        if self.soft_prompt is not None:
            self.soft_prompt.materialize()
        if self.prefix is not None:
            self.prefix.materialize()
        return {name: p.detach().clone() for name, p in self.named_parameters() if not name.startswith("model.")}


def _check_pattern(pattern: Pattern, kind: str, prompt_input: str) -> None:
    if "text_pair" in pattern.fields:
        raise UserError(f"pattern '{pattern}': a relation has one subject, {{text}}; {{text_pair}} has no value")
    if kind == "causal" and not pattern.ends_with_mask:
        raise UserError(f"pattern '{pattern}': a causal LM reads the object as the next token, so the pattern must end with {{mask}}")
    if prompt_input == "soft" and not pattern.soft_tokens:
        raise UserError(f"pattern '{pattern}' has no soft tokens to train: add some ('[P*3] {{text}} [P*3] {{mask}}')")
    if prompt_input != "soft" and pattern.soft_tokens:
        raise UserError(f"pattern '{pattern}' has soft tokens: they train only with --method ptuning")
