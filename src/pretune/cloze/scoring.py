"""Label-word scoring: how likely each verbalizer word is in place of the mask, for masked and causal LMs.

A batch's rows and targets are laid out by the LM kind (`lm`); a word's score is the sum of its
targets' log-probabilities, all rows of a batch going through the model together.

Only the label words' rows of the output layer are used (never the full vocabulary), plus the
output bias and logit soft-capping where the model has them; which rows those are (the model's
own, or trainable copies with `--label-tokens learned`) is the business of `label_rows`. A
log-probability also needs the normaliser log Z over the vocabulary at its position; wherever that
normaliser is the same for every word of an example it adds the same constant to every label's
score, which no softmax over labels can see, so it is skipped. That holds for a word's first token
in a causal LM (all words are predicted from the same prefix) and for every mask of a masked LM
when all words have the same number of tokens. Only the remaining positions (later tokens of
multi-token words, text after the mask) project onto the full vocabulary, and only there.
`full_vocabulary_word_scores` computes the same scores the naive way (all logits of the model, then
index), as a reference.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone
from ..errors import UserError
from ..precision import exact
from .label_rows import LearnedRows, OutputRows
from .lm import ClozeBatch, language_model


def output_layer(backbone: Backbone) -> nn.Module:
    """The model's output layer (its vocabulary projection); a UserError for a model without one."""
    output = backbone.model.get_output_embeddings()
    if output is None:
        raise UserError(f"model '{backbone.name}' exposes no output layer to read label words from")
    return output


class LabelWordScorer:
    """Word scores [B, W] from a batch laid out by the LM kind, reading only the label words' output rows
    (`rows`: the model's own unless given)."""

    def __init__(self, backbone: Backbone, rows: OutputRows | LearnedRows | None = None):
        self.lm = language_model(backbone)
        self.model = backbone.model
        self.body = backbone.body
        self.rows = rows if rows is not None else OutputRows(output_layer(backbone))
        self.softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        self._transform = self.lm.output_transform(self.model)  # what the output layer reads

    # -- the cheap path: label-word rows only ------------------------------------------
    def word_scores(self, batch: ClozeBatch) -> torch.Tensor:
        """Word scores of a batch of token ids (no soft tokens, no prefix)."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **self.lm.body_arguments}
        return self.word_scores_from_hidden(self.body(**inputs).last_hidden_state, batch)

    def word_scores_from_hidden(self, hidden: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        picked = self._transform(hidden[batch.target_row, batch.target_position])  # [K, H]
        weight, bias = self.rows.rows(batch.target_token)
        # Label scores in float32 whatever the body computed in: K dot products cost nothing.
        scores = (picked.float() * weight.float()).sum(dim=-1)
        if bias is not None:
            scores = scores + bias.float()
        scores = self._softcapped(scores)
        if batch.target_normalize.any():
            scores = scores - self._log_normalisers(picked, batch)
        return self._per_word(scores, batch)

    def vocabulary_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] over the whole vocabulary from hidden states [N, H] read at the answer's
        position: the open-vocabulary readout of knowledge probing, where every token is a label."""
        return self._full_output(self._transform(hidden))

    def _full_output(self, picked: torch.Tensor) -> torch.Tensor:
        """The output layer over the whole vocabulary, in float32 even where the body computes in
        bfloat16: its logits feed softmaxes over tens of thousands of entries, where bfloat16's three
        significant digits would move a log-probability by a tenth."""
        with exact(picked.device.type):
            return self._softcapped(self.rows.logits(picked.float()).float())

    def _log_normalisers(self, picked: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        """log Z over the full vocabulary, computed once per distinct (row, position) that needs it."""
        normalize = batch.target_normalize
        key = batch.target_row * batch.input_ids.size(1) + batch.target_position
        unique, inverse = torch.unique(key[normalize], return_inverse=True)
        first = torch.zeros(len(unique), dtype=torch.long, device=key.device)
        first.scatter_(0, inverse, torch.nonzero(normalize).squeeze(1))
        log_z = self._full_output(picked[first]).logsumexp(dim=-1)
        out = torch.zeros_like(normalize, dtype=log_z.dtype)
        out[normalize] = log_z[inverse]
        return out

    def _softcapped(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.softcap:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    @staticmethod
    def _per_word(scores: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        examples, words = batch.num_examples, batch.num_words
        total = torch.zeros(examples * words, dtype=scores.dtype, device=scores.device)
        return total.index_add(0, batch.target_slot, scores).view(examples, words)

    # -- the reference path: the model's full logits, then index ------------------------
    def full_vocabulary_word_scores(self, batch: ClozeBatch) -> torch.Tensor:
        """The same scores from the model's own logits over the whole vocabulary at every position."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **self.lm.body_arguments}
        logits = self.model(**inputs).logits
        picked = logits[batch.target_row, batch.target_position]  # [K, V]
        scores = picked.gather(1, batch.target_token.unsqueeze(1)).squeeze(1)
        scores = scores - picked.logsumexp(dim=-1) * batch.target_normalize
        return self._per_word(scores, batch)
