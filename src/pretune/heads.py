"""Classification heads: a linear or MLP map from one hidden state to one score per label.

The `head` method puts one on a pooled hidden state; a cloze method's `head` readout puts one on
the hidden state at the mask.
"""

from __future__ import annotations

from torch import nn

HEADS = ("linear", "mlp")


def build_head(hidden_size: int, num_labels: int, kind: str = "linear", hidden: int = 256, dropout: float = 0.1) -> list[nn.Module]:
    """The layers of a head, the last one producing the label scores."""
    if kind == "linear":
        return [nn.Dropout(dropout), nn.Linear(hidden_size, num_labels)]
    return [
        nn.Dropout(dropout),
        nn.Linear(hidden_size, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_labels),
    ]
