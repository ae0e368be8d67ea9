"""The vocabulary readout: scores over the whole vocabulary where the answer is read (knowledge
probing, LAMA): every token is a label, so the full output layer runs at that one position (the
mask of a masked LM, the last token before the mask of a causal LM), head transform, output bias
and logit soft-capping included. Its labels are token ids, not a task's label names."""

from __future__ import annotations

import torch
from torch import nn

from ..lm import ClozeBatch
from ..scoring import LabelWordScorer


class VocabularyReadout(nn.Module):
    slot = "vocabulary"
    calibratable = False

    def __init__(self, prompt, lm, backbone, task=None, config=None):
        super().__init__()
        self.lm = lm
        self.scorer = LabelWordScorer(backbone)

    def batch(self, rendered) -> ClozeBatch:
        return self.lm.position_batch(rendered)

    def scores(self, hidden: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        """Logits [B, V]: one row per example (the layout gives one target per example)."""
        return self.scorer.vocabulary_logits(hidden[batch.target_row, batch.target_position])
