"""Deep prompts (P-tuning v2, prefix tuning): trainable keys and values at every layer, body frozen.

The task is posed as in PET (the task's pattern and verbalizer, or `--pattern`/`--verbalizer`) and
every attention layer also reads `--prompt-length` trained key/value vectors ahead of the input
(see `prefix`). A prompt at every layer reaches much deeper into a frozen model than soft tokens
at its input, at the cost of more parameters (2 x layers x key/value width per prompt vector).
`--reparam` trains the prefix through an MLP; after training it is materialised, so the saved
adapter holds only the keys and values (plus a head with `--readout head`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..cloze.prefix import Prefix, cache_argument, model_key_values
from ..errors import UserError
from .cloze import BoundPrompt, _max_length
from .ptuning import PromptConfig, TrainablePromptMethod


@dataclass
class DeepPromptConfig(PromptConfig):
    method_name: ClassVar[str] = "deep-prompt"
    prompt_length: int = 16  # prefix vectors at every layer
    reparam: bool = False  # train the prefix through an MLP (Li & Liang 2021), materialised after training

    def validate(self, task=None) -> None:
        super().validate(task)
        if self.prompt_length < 1:
            raise UserError(f"--prompt-length must be at least 1, got {self.prompt_length}")


class DeepPromptMethod(TrainablePromptMethod):
    name = "deep-prompt"
    config_class = DeepPromptConfig

    def __init__(self, backbone, task, config: DeepPromptConfig, training):
        super().__init__(backbone, task, config, training)
        length = config.prompt_length
        # The prefix takes `length` of the model's positions; the input keeps the rest.
        self.max_length = _max_length(config.max_length + length, backbone) - length
        self.bound = [BoundPrompt(p, backbone.tokenizer, backbone.kind, self.max_length) for p in self.prompts]
        tokens = starting_tokens(backbone.tokenizer, length)
        initial = model_key_values(backbone.body, self.model.config, tokens.to(self.model.device))
        self.prefix = Prefix(initial, backbone.hidden_size, config.reparam)
        self.cache_argument = cache_argument(backbone.body)

    def prefix_inputs(self, batch: dict) -> dict:
        mask = batch["attention_mask"]
        rows = mask.shape[0]
        dtype = self.model.get_input_embeddings().weight.dtype
        cache = self.prefix.cache(rows, self.model.config, dtype)
        extended = torch.cat([mask.new_ones(rows, self.prefix.length), mask], dim=1)
        return {self.cache_argument: cache, "attention_mask": extended}

    def materialize(self) -> None:
        self.prefix.materialize()


def starting_tokens(tokenizer, count: int) -> torch.Tensor:
    """The tokens whose keys and values a prefix starts from: blank lines where the vocabulary has a
    newline token, since a text after blank lines reads like the text alone, so the untrained prefix
    leaves the pattern's zero-shot answer nearly as it is (random tokens in front can change it);
    otherwise (WordPiece drops newlines) `count` random ordinary tokens."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1 and newline[0] != tokenizer.unk_token_id:
        return torch.full((count,), newline[0])
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    return ordinary[torch.randperm(len(ordinary))[:count]]
