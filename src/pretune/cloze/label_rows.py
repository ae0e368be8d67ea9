"""Label tokens fixed or learned: the output-layer rows that a verbalizer's words are scored with.

- `fixed`: the model's own output layer, read as it is (pretune's scoring before this option).
- `learned` (DART, Zhang et al. 2022, "Differentiable Prompt Makes Pre-trained Language Models Better
  Few-shot Learners"): the rows of the label words' tokens become a small trainable parameter
  [distinct label-word tokens, hidden] (and their output-bias entries, where the layer has a bias),
  initialised from the model's rows, so that the readout can move away from words the pattern
  happened to fit poorly. With a frozen body that is a few thousand parameters.

The model's own output layer is never modified: smollm2 and BERT tie it to the input embeddings,
so training the shared matrix would change the words as the model reads them too. DART's label
tokens matter here as outputs, so only trainable copies of those rows train; a word's tokens that
are also input (the later tokens of a multi-token word in a causal LM) are read with the model's
own input embeddings.

A learned token's row is its row wherever the scorer reads it: at a label word's target, at a
token of the text after the mask that happens to be the same token, and in the normaliser log Z
over the vocabulary (multi-token words), so the scores stay log-probabilities of one distribution.
The scorer asks one of these objects for "the rows of these tokens" and "the logits over the
vocabulary"; it never knows which kind it holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .verbalizer import LabelWords

FIXED, LEARNED = "fixed", "learned"
LABEL_TOKENS = (FIXED, LEARNED)


class OutputRows:
    """The model's output layer as it is (`fixed`). A plain object, not a module: the layer belongs
    to the model, and registering it again would save it twice."""

    def __init__(self, output: nn.Module):
        self.output = output

    def rows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight rows [K, H] of `tokens` [K], and their bias entries [K] (None without a bias)."""
        bias = self.output.bias[tokens] if self.output.bias is not None else None
        return self.output.weight[tokens], bias

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] over the whole vocabulary from hidden states [N, H], computed in the hidden
        states' format (the layer may be held in bfloat16, frozen, while the caller asks for float32)."""
        bias = self.output.bias.to(hidden.dtype) if self.output.bias is not None else None
        return F.linear(hidden, self.output.weight.to(hidden.dtype), bias)


class LearnedRows(nn.Module):
    """Trainable copies of the label words' rows (`learned`), read in place of the model's for those
    tokens; every other token reads the model's layer."""

    def __init__(self, output: nn.Module, tokens: list[int]):
        super().__init__()
        self.model_rows = OutputRows(output)
        # Sorted, so that a token's copy is found by binary search (no vocabulary-sized table).
        self.register_buffer("tokens", torch.tensor(sorted(set(tokens)), dtype=torch.long), persistent=False)
        with torch.no_grad():
            self.weight = nn.Parameter(output.weight[self.tokens].clone())
            bias = output.bias[self.tokens].clone() if output.bias is not None else None
        self.bias = nn.Parameter(bias) if bias is not None else None

    def rows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        slot, learned = self._slots(tokens)
        weight, bias = self.model_rows.rows(tokens)
        weight = torch.where(learned.unsqueeze(1), self.weight[slot], weight)
        if bias is not None:
            bias = torch.where(learned, self.bias[slot], bias)
        return weight, bias

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model_rows.logits(hidden)
        learned = F.linear(hidden, self.weight, self.bias)
        return logits.index_copy(1, self.tokens, learned.to(logits.dtype))

    def _slots(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's index among the learned ones (clamped, for tokens that are not), and whether it is one."""
        slot = torch.searchsorted(self.tokens, tokens).clamp(max=len(self.tokens) - 1)
        return slot, self.tokens[slot] == tokens


def label_rows(kind: str, output: nn.Module, words: LabelWords) -> OutputRows | LearnedRows:
    """The rows a verbalizer readout scores `words` with: `fixed` or `learned` (`LABEL_TOKENS`)."""
    if kind == LEARNED:
        return LearnedRows(output, [token for ids in words.token_ids for token in ids])
    return OutputRows(output)
