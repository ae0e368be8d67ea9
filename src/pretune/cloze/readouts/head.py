"""The head readout: a trained linear or MLP head on the hidden state where the answer is read
(the mask of a masked LM, the last token before the mask of a causal LM)."""

from __future__ import annotations

import torch
from torch import nn

from ...heads import build_head
from ..lm import ClozeBatch


class HeadReadout(nn.Sequential):
    """The head's layers themselves (so its weights save as `head.<i>.*`), plus where it reads."""

    slot = "head"
    calibratable = False

    def __init__(self, prompt, lm, backbone, task, config):
        super().__init__(*build_head(backbone.hidden_size, task.num_labels, config.head))
        self.lm = lm

    def batch(self, rendered) -> ClozeBatch:
        return self.lm.position_batch(rendered)

    def scores(self, hidden: torch.Tensor, batch: ClozeBatch) -> torch.Tensor:
        read = hidden[batch.target_row, batch.target_position]
        return self(read.to(self[-1].weight.dtype))
