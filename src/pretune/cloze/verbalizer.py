"""Verbalizers: the words that stand for each label, their token ids, and how their scores combine.

    positive=great,good,awesome negative=bad,awful,terrible
    very negative=terrible; negative=bad; neutral=okay; positive=good; very positive=great

Entries are separated by spaces, or by semicolons when a label or a word holds a space. A word may
be several tokens (" awesome" can be two); the scorers handle that, nothing is rejected for it.

A label's score combines its words' scores (log-probabilities) with `logsumexp` (default), `mean`
or `max`. The default is logsumexp, by experiment (benchmarks/pet_sst2.py, results in
benchmarks/results/pet_sst2.md): zero-shot few-shot SST-2, 872 test sentences, smollm2-135m,
pattern "Review: {text}\\nSentiment: {mask}", six words a label (positive, good, great, excellent,
wonderful, amazing / negative, bad, terrible, awful, horrible, poor): logsumexp 78.6%, max 78.2%,
mean 76.1%. The sum of the words' probabilities is the probability that the mask is any of them;
the mean of log-probabilities instead lets one rare synonym drag its label down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError

AGGREGATIONS = ("logsumexp", "mean", "max")
DEFAULT_AGGREGATION = "logsumexp"


@dataclass(frozen=True)
class Verbalizer:
    words: dict[str, tuple[str, ...]]  # label name -> its words, in the task's label order

    @classmethod
    def parse(cls, spec: str) -> Verbalizer:
        """`label=word,word label=word`, or `;`-separated entries when names hold spaces."""
        if not isinstance(spec, str) or not spec.strip():
            raise UserError("empty verbalizer: write one like 'positive=great negative=terrible'")
        entries = spec.split(";") if ";" in spec else spec.split()
        mapping: dict[str, list[str]] = {}
        for entry in filter(None, (e.strip() for e in entries)):
            label, equals, words = entry.partition("=")
            if not equals or not label.strip():
                raise UserError(f"verbalizer '{spec}': entry '{entry}' is not label=word[,word...]")
            if label.strip() in mapping:
                raise UserError(f"verbalizer '{spec}': label '{label.strip()}' is given twice")
            mapping[label.strip()] = words.split(",")
        return cls.from_mapping(mapping, spec)

    @classmethod
    def from_mapping(cls, mapping: dict, source: str | None = None) -> Verbalizer:
        """From {label: word or [words]} (the Python API)."""
        where = f"verbalizer '{source}'" if source else "verbalizer"
        words: dict[str, tuple[str, ...]] = {}
        for label, value in mapping.items():
            items = [value] if isinstance(value, str) else list(value)
            cleaned = tuple(w.strip() for w in items)
            if not cleaned or not all(cleaned):
                raise UserError(f"{where}: label '{label}' has an empty word")
            words[str(label)] = cleaned
        return cls(words)

    @classmethod
    def from_label_names(cls, labels: list[str]) -> Verbalizer:
        """Each label stands for itself: `not_entailment` becomes the words "not entailment"."""
        return cls({label: (re.sub(r"[_-]+", " ", label).strip() or label,) for label in labels})

    def for_labels(self, labels: list[str]) -> Verbalizer:
        """The same verbalizer in the task's label order; every label needs words, no others allowed."""
        unknown = [label for label in self.words if label not in labels]
        if unknown:
            raise UserError(f"verbalizer: unknown label '{unknown[0]}' (the task's labels: {', '.join(labels)})")
        missing = [label for label in labels if label not in self.words]
        if missing:
            raise UserError(f"verbalizer: no words for label '{missing[0]}' (add {missing[0]}=word)")
        return Verbalizer({label: self.words[label] for label in labels})

    def __str__(self) -> str:
        separator = "; " if any(" " in k or any(" " in w for w in v) for k, v in self.words.items()) else " "
        return separator.join(f"{label}={','.join(words)}" for label, words in self.words.items())


@dataclass(frozen=True)
class LabelWords:
    """A verbalizer's words as token ids, as they occur after the pattern's text."""

    words: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]  # the label index of each word
    num_labels: int

    @property
    def max_tokens(self) -> int:
        return max(len(ids) for ids in self.token_ids)

    def __len__(self) -> int:
        return len(self.words)


def tokenize_label_words(verbalizer: Verbalizer, encode, lead: str = "", unknown_id: int | None = None) -> LabelWords:
    """Token ids of every word, tokenized with the whitespace that precedes the mask (`lead`), so
    " great" after "It was" gets the same ids a BPE or SentencePiece model saw in pre-training."""
    words, token_ids, labels = [], [], []
    seen: dict[tuple[int, ...], str] = {}
    for index, (label, label_words) in enumerate(verbalizer.words.items()):
        for word in label_words:
            ids = tuple(encode(lead + word))
            if not ids:
                raise UserError(f"verbalizer: word '{word}' of label '{label}' has no tokens")
            if unknown_id is not None and unknown_id in ids:
                raise UserError(f"verbalizer: word '{word}' of label '{label}' is not in the model's vocabulary")
            if ids in seen:
                raise UserError(f"verbalizer: words '{seen[ids]}' and '{word}' have the same tokens; keep one")
            seen[ids] = word
            words.append(word)
            token_ids.append(ids)
            labels.append(index)
    return LabelWords(tuple(words), tuple(token_ids), tuple(labels), len(verbalizer.words))


def aggregate(word_scores: torch.Tensor, word_labels: torch.Tensor, num_labels: int, how: str) -> torch.Tensor:
    """Label scores [B, C] from word scores [B, W], `word_labels` [W] naming each word's label."""
    if how not in AGGREGATIONS:
        raise UserError(f"unknown aggregation '{how}' (choose one of {', '.join(AGGREGATIONS)})")
    labels = torch.arange(num_labels, device=word_scores.device)
    member = word_labels.to(word_scores.device).unsqueeze(0) == labels.unsqueeze(1)  # [C, W]
    if how == "mean":
        weights = member.to(word_scores.dtype)
        return word_scores @ (weights / weights.sum(dim=1, keepdim=True)).T
    masked = word_scores.unsqueeze(1).masked_fill(~member, float("-inf"))  # [B, C, W]
    return masked.logsumexp(dim=-1) if how == "logsumexp" else masked.amax(dim=-1)
