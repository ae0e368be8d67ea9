"""The verbalizer readout: each label's words scored in place of the mask, combined per label."""

from __future__ import annotations

import torch
from torch import nn

from ..lm import ClozeBatch
from ..scoring import LabelWordScorer
from ..verbalizer import aggregate


class VerbalizerReadout(nn.Module):
    slot = "verbalizer"
    calibratable = True

    def __init__(self, prompt, lm, backbone, task, config):
        super().__init__()
        self.words, self.word_labels = prompt.words, prompt.word_labels
        self.lm, self.num_labels, self.how = lm, task.num_labels, config.aggregate
        self.scorer = LabelWordScorer(backbone)

    def batch(self, rendered) -> ClozeBatch:
        return self.lm.label_word_batch(rendered, self.words)

    def scores(self, hidden: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        words = self.scorer.word_scores_from_hidden(hidden, batch)
        return aggregate(words, self.word_labels, self.num_labels, self.how)
