"""Training micro-batches cut by length, so that short sentences are not padded to the longest.

A batch of 8 few-shot sentences of different lengths is 41% padding when it runs as one forward
pass (benchmarks/results/speed_memory.md). When scoring the batch in parts gives the same
gradient as scoring it whole (nothing random in the forward pass: see `Method.splits_exactly`),
the trainer runs it as consecutive groups of similar length instead, each weighted by its share
of the batch. The batch's composition, and so the training itself, is unchanged; only the
padding goes (up to floating-point summation order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..methods.base import Method

# What one more forward and backward pass costs besides its tokens, counted in tokens: the fixed
# per-call work (Python, kernel launches, layer norms on tiny tensors). A cut is made only where
# the padding it removes outweighs it, so batches of equal lengths stay whole.
CALL_COST_TOKENS = 32


def length_groups(lengths: Sequence[int], call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Positions of `lengths` in groups of similar length that minimise the padded tokens computed
    plus `call_cost` per group (exact, by dynamic programming over the positions sorted by length)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    cost = [0.0] + [math.inf] * n  # cost[j]: the cheapest grouping of the j shortest
    cut = [0] * (n + 1)  # cut[j]: where the last group of that grouping starts
    for end in range(1, n + 1):
        longest = lengths[order[end - 1]]
        for start in range(end):
            candidate = cost[start] + (end - start) * longest + call_cost
            if candidate < cost[end]:
                cost[end], cut[end] = candidate, start
    groups, end = [], n
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def cut_by_length(method: Method, indices: list[int], items: list) -> list[list[int]]:
    """The micro-batch `indices` as one forward pass, or cut by length where that computes the same."""
    if len(indices) < 2 or not method.splits_exactly():
        return [indices]
    groups = length_groups([method.item_length(items[i]) for i in indices], CALL_COST_TOKENS)
    return [[indices[position] for position in group] for group in groups]
