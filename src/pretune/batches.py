"""Typed batches: the tensors a method reads, and the one way sequences are padded.

Every batch is a dataclass whose tensor fields move together with `.to(device)`; other fields
(counts) stay as they are. Sequences are padded on the right, so that a row's position ids stay
those of the unpadded sequence (the attention mask hides the padding).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


class Batch:
    """Base of the batch dataclasses: `.to(device)` moves every tensor field."""

    def to(self, device: torch.device | str):
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True)
                 for f in fields(self) if torch.is_tensor(getattr(self, f.name))}
        return replace(self, **moved)


def pad_right(rows: list[list[int]], value: int, width: int | None = None) -> torch.Tensor:
    """A [len(rows), width] long tensor: each row's values, then `value` up to the longest row."""
    width = width if width is not None else max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row)
    return out


def attention_mask(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    """1 over each row's own tokens, 0 over the right padding."""
    return pad_right([[1] * len(row) for row in rows], 0, width)


@dataclass
class TokenBatch(Batch):
    """Token ids, right-padded, and their attention mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @classmethod
    def padded(cls, rows: list[list[int]], pad_id: int) -> TokenBatch:
        return cls(pad_right(rows, pad_id), attention_mask(rows))


@dataclass
class FeatureBatch(Batch):
    """Cached features of a frozen body, one vector per example."""

    features: torch.Tensor
