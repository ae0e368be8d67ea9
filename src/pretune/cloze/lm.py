"""Masked vs causal language models: everything that differs between the two, in one place.

A cloze batch is laid out as *rows* (token sequences the model reads) and *targets* (one per token
of a label word, or of text after the mask, that must be scored): the target's row, the position
whose hidden state predicts it, its token id, and the word it belongs to. A word's score is the sum
of its targets' log-probabilities, so multi-token words cost no extra forward pass per word.

- Masked LM: a row is prefix + N masks + suffix for each length N the words have (one row when all
  words are one token); a word of N tokens fills the N masks in parallel. The answer is read at
  the mask, through the LM head's transform; PET's auxiliary loss restores 15% of the tokens.
- Causal LM: a row is prefix + word (+ text after the mask); the word's tokens and what follows are
  scored left to right (what follows alone with noisy-channel scoring, `cloze.channel`), words of
  one token share a single row (the prefix). The answer is read at the last token before the mask;
  the auxiliary loss predicts every next token. Nothing may close the text (an end-of-text marker
  would be scored as part of every label), and the body runs without a key/value cache.

`language_model(backbone)` gives the kind's object; the methods never test the kind themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import Backbone
from ..batches import Batch, attention_mask, pad_right
from ..errors import UserError
from .pattern import Mask, Pattern, PatternRenderer, Rendered, Soft
from .verbalizer import LabelWords

MASKED_FRACTION = 0.15  # of the tokens a masked LM restores in the auxiliary loss
IGNORED = -100  # the label transformers' losses skip


@dataclass
class ClozeBatch(Batch):
    """Rows the model reads and the targets read from them (see the module's docstring)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_row: torch.Tensor
    target_position: torch.Tensor
    target_token: torch.Tensor
    target_slot: torch.Tensor  # example * num_words + word
    target_normalize: torch.Tensor  # whether the target needs its log-normaliser (see `scoring`)
    num_examples: int
    num_words: int
    soft_mask: torch.Tensor | None = None  # where soft tokens sit, when the pattern has any


@dataclass
class LanguageModellingBatch(Batch):
    """Inputs and labels for the model's own language-modelling loss."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


class _Layout:
    """Rows (deduplicated within an example) and the targets read from them."""

    def __init__(self, num_examples: int, num_words: int):
        self.num_examples, self.num_words = num_examples, num_words
        self.rows: list[list[int]] = []
        self.soft: list[list[int]] = []
        self._row_index: dict[tuple, int] = {}
        self.targets: list[tuple[int, int, int, int, bool]] = []  # row, position, token, slot, normalize

    def row(self, example: int, tokens: list[int], soft_positions: list[int]) -> int:
        key = (example, tuple(tokens))
        if key not in self._row_index:
            self._row_index[key] = len(self.rows)
            self.rows.append(tokens)
            self.soft.append([p for p in soft_positions if p < len(tokens)])
        return self._row_index[key]

    def target(self, row: int, position: int, token: int, example: int, word: int, normalize: bool) -> None:
        self.targets.append((row, position, token, example * self.num_words + word, normalize))

    def to_batch(self, pad_id: int) -> ClozeBatch:
        input_ids = pad_right(self.rows, pad_id)
        # No targets at all is a batch of channel rows whose texts are all empty: every label scores 0.
        row, position, token, slot, normalize = zip(*self.targets) if self.targets else ((),) * 5
        soft_mask = None
        if any(self.soft):
            soft_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            for i, positions in enumerate(self.soft):
                soft_mask[i, positions] = True
        return ClozeBatch(
            input_ids, attention_mask(self.rows), _indices(row), _indices(position), _indices(token), _indices(slot),
            torch.tensor(normalize, dtype=torch.bool), self.num_examples, self.num_words, soft_mask,
        )


def _indices(values: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _shifted(rendered: Rendered, middle: int) -> list[int]:
    """Soft-token positions in prefix + `middle` tokens + suffix."""
    return rendered.soft_in_prefix + [len(rendered.prefix) + middle + i for i in rendered.soft_in_suffix]


def _padded_lm_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> LanguageModellingBatch | None:
    tokens = [t for t, _ in rows]
    batch = LanguageModellingBatch(pad_right(tokens, pad_id), attention_mask(tokens), pad_right([lab for _, lab in rows], IGNORED))
    return batch if (batch.labels != IGNORED).any() else None


class MaskedLM:
    """A masked LM (BERT, RoBERTa): the mask may sit anywhere; the answer is read at the mask."""

    name = "mlm"
    closing_special_tokens = True
    body_arguments: dict = {}

    def __init__(self, backbone: Backbone):
        self.mask_id, self.pad_id = backbone.tokenizer.mask_token_id, backbone.tokenizer.pad_token_id
        if self.mask_id is None:
            raise UserError(f"model '{backbone.name}' is a masked LM without a mask token")

    def check_pattern(self, pattern: Pattern, renderer: PatternRenderer) -> None:
        """Refuse a pattern this kind of LM cannot read (a masked LM reads any)."""

    @staticmethod
    def output_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The LM head's transform (dense, activation, norm) without its vocabulary projection: the
        hidden state as the output layer reads it."""
        head, parent, name = _mlm_head(model)

        def transform(hidden: torch.Tensor) -> torch.Tensor:
            with _bypassed(parent, name):
                return head(hidden)

        return transform

    def label_word_batch(self, rendered: list[Rendered], words: LabelWords) -> ClozeBatch:
        """Rows prefix + N masks + suffix, one per word length N; targets: each word's tokens at its masks."""
        layout = _Layout(len(rendered), len(words))
        # With one word length, every word is read at the same masks of the same row: their
        # normalisers are shared and cancel between labels.
        normalize = len({len(ids) for ids in words.token_ids}) > 1
        for example, r in enumerate(rendered):
            for word, ids in enumerate(words.token_ids):
                row = layout.row(example, r.prefix + [self.mask_id] * len(ids) + r.suffix, _shifted(r, len(ids)))
                for k, token in enumerate(ids):
                    layout.target(row, len(r.prefix) + k, token, example, word, normalize)
        return layout.to_batch(self.pad_id)

    def position_batch(self, rendered: list[Rendered]) -> ClozeBatch:
        """One target per example where a head reads the answer: the mask."""
        return self.label_word_batch(rendered, _one_position(self.mask_id))

    def language_modelling_batch(self, rendered: list[Rendered], renderer: PatternRenderer) -> LanguageModellingBatch | None:
        """15% of each text's own tokens masked and restored (never the special tokens, the soft
        tokens or the pattern's mask, whose answer is unknown); None when nothing is to predict."""
        return _padded_lm_batch([self._masked_row(r, renderer) for r in rendered], self.pad_id)

    def _masked_row(self, rendered: Rendered, renderer: PatternRenderer) -> tuple[list[int], list[int]]:
        tokens = rendered.prefix + [self.mask_id] + rendered.suffix
        fixed = set(range(len(renderer.opening))) | {len(rendered.prefix)}
        fixed |= set(range(len(tokens) - len(renderer.closing), len(tokens)))
        fixed |= set(rendered.soft_in_prefix) | {len(rendered.prefix) + 1 + i for i in rendered.soft_in_suffix}
        candidates = [i for i in range(len(tokens)) if i not in fixed]
        labels = [IGNORED] * len(tokens)
        if not candidates:
            return tokens, labels
        count = max(1, round(MASKED_FRACTION * len(candidates)))
        chosen = torch.randperm(len(candidates))[:count].tolist()
        for position in (candidates[c] for c in chosen):
            labels[position] = tokens[position]
            tokens[position] = self.mask_id
        return tokens, labels


class CausalLM:
    """A causal LM (GPT, Llama): reads left to right; the answer is the next token after the prefix."""

    name = "causal"
    closing_special_tokens = False  # an end-of-text marker after the mask would be scored with every label
    body_arguments = {"use_cache": False}

    def __init__(self, backbone: Backbone):
        self.pad_id = backbone.tokenizer.pad_token_id

    def check_pattern(self, pattern: Pattern, renderer: PatternRenderer) -> None:
        if isinstance(pattern.segments[0], Mask) and not renderer.opening:
            raise UserError(f"pattern '{pattern}': a causal LM needs text before {{mask}}")
        after_mask = pattern.segments[pattern.segments.index(pattern.mask) + 1 :]
        if any(isinstance(s, Soft) for s in after_mask):
            raise UserError(f"pattern '{pattern}': a causal LM reads left to right, so soft tokens after {{mask}} "
                            "cannot change its answer; put them before {mask}")

    @staticmethod
    def output_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """A causal LM's output layer reads the final hidden state as it is."""
        return lambda hidden: hidden

    def label_word_batch(self, rendered: list[Rendered], words: LabelWords) -> ClozeBatch:
        """Rows prefix + word + suffix (without the last token, which nothing reads); targets: the
        word's tokens and the suffix's, each predicted from the position before it."""
        layout = _Layout(len(rendered), len(words))
        for example, r in enumerate(rendered):
            if not r.prefix:
                raise UserError("a causal LM needs text before {mask}, and an example left none there: add words before the mask")
            for word, ids in enumerate(words.token_ids):
                sequence = r.prefix + list(ids) + r.suffix
                row = layout.row(example, sequence[:-1], _shifted(r, len(ids)))
                for position in range(self.first_scored(r, ids), len(sequence)):
                    # The first word token is predicted from the prefix alone: the same normaliser for every word.
                    normalize = position > len(r.prefix)
                    layout.target(row, position - 1, sequence[position], example, word, normalize)
        return layout.to_batch(self.pad_id)

    @staticmethod
    def first_scored(rendered: Rendered, word: tuple[int, ...]) -> int:
        """Where a row's scored tokens start: at the word (its probability, then the text's after it).
        Noisy-channel scoring (`cloze.channel`) starts after it."""
        return len(rendered.prefix)

    def position_batch(self, rendered: list[Rendered]) -> ClozeBatch:
        """One target per example where a head reads the answer: the last token before the mask (the
        model cannot see what follows it, so the text after the mask is dropped)."""
        before_mask = [Rendered(r.prefix, [], r.soft_in_prefix) for r in rendered]
        return self.label_word_batch(before_mask, _one_position(self.pad_id))

    def language_modelling_batch(self, rendered: list[Rendered], renderer: PatternRenderer) -> LanguageModellingBatch | None:
        """The rendered texts without the mask, every token a label (the model shifts them itself)."""
        return _padded_lm_batch([self._causal_row(r) for r in rendered], self.pad_id)

    @staticmethod
    def _causal_row(rendered: Rendered) -> tuple[list[int], list[int]]:
        tokens = rendered.prefix + rendered.suffix
        soft = set(rendered.soft_in_prefix)  # none after the mask: check_pattern refuses them for a causal LM
        return tokens, [IGNORED if i in soft else t for i, t in enumerate(tokens)]


LanguageModel = MaskedLM | CausalLM


def language_model(backbone: Backbone) -> LanguageModel:
    """The kind-specific half of a cloze method for this model; a UserError for a model without an LM head."""
    if backbone.kind == "mlm":
        return MaskedLM(backbone)
    if backbone.kind == "causal":
        return CausalLM(backbone)
    raise UserError(
        f"model '{backbone.name}' has no language-model head (kind {backbone.kind}); "
        "prompt methods need a masked or causal LM (use --method head)"
    )


def _one_position(token: int) -> LabelWords:
    """A one-token stand-in 'word': the layout then yields one target per example, where the answer is read."""
    return LabelWords(("{mask}",), ((token,),), (0,), 1)


def _mlm_head(model: nn.Module) -> tuple[nn.Module, nn.Module, str]:
    """The module that maps hidden states to vocabulary logits (BERT's `cls`, RoBERTa's `lm_head`),
    the module holding its decoder and the decoder's attribute name. Found generically: the child
    of the model that contains the output embeddings."""
    decoder = model.get_output_embeddings()
    path = next(name for name, module in model.named_modules() if module is decoder)
    if "." not in path:
        raise UserError(
            f"cannot separate the head transform of {type(model).__name__} from its output layer "
            f"('{path}' is not inside a head module)"
        )
    parent_path, name = path.rsplit(".", 1)
    return model.get_submodule(path.split(".")[0]), model.get_submodule(parent_path), name


@contextlib.contextmanager
def _bypassed(parent: nn.Module, name: str):
    """Temporarily replace a head's vocabulary projection with the identity, so that the head
    returns the transformed hidden state (whatever activations and norms its forward applies)."""
    decoder = getattr(parent, name)
    setattr(parent, name, nn.Identity())
    try:
        yield
    finally:
        setattr(parent, name, decoder)
