"""The verbalizer readout: each label's words scored in place of the mask, combined per label.

Its words are scored with the model's output rows, or (`--label-tokens learned`) with trainable copies
of them, which then train as the method's head (`cloze.label_rows`)."""

from __future__ import annotations

import torch
from torch import nn

from ..label_rows import label_rows
from ..lm import ClozeBatch
from ..scoring import LabelWordScorer, output_layer
from ..verbalizer import aggregate


class VerbalizerReadout(nn.Module):
    slot = "verbalizer"
    calibratable = True

    def __init__(self, prompt, lm, backbone, task, config):
        super().__init__()
        self.words, self.word_labels = prompt.words, prompt.word_labels
        self.lm, self.num_labels, self.how = lm, task.num_labels, config.aggregate
        # A module when learned (its weights save as `verbalizer.label_rows.*`), a plain object when fixed.
        self.label_rows = label_rows(config.label_tokens, output_layer(backbone), self.words)
        self.scorer = LabelWordScorer(backbone, self.label_rows)

    def batch(self, rendered) -> ClozeBatch:
        return self.lm.label_word_batch(rendered, self.words)

    def scores(self, hidden: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        words = self.scorer.word_scores_from_hidden(hidden, batch)
        return aggregate(words, self.word_labels, self.num_labels, self.how)
