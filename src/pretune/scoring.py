"""Label-word scoring: how likely each verbalizer word is in place of the mask, for masked and causal LMs.

A batch is laid out as *rows* (token sequences the model reads) and *targets* (one per token of a
label word, or of text after the mask, that must be scored): the target's row, the position whose
hidden state predicts it, its token id, and the word it belongs to. A word's score is the sum of
its targets' log-probabilities, so multi-token words cost no extra forward pass per word: all
rows of a batch go through the model together.

- Masked LM: a row is prefix + N masks + suffix for each length N the words have (one row when all
  words are one token); a word of N tokens fills the N masks in parallel.
- Causal LM: a row is prefix + word (+ text after the mask); the word's tokens and what follows
  are scored left to right. Words of one token share a single row: the prefix.

Only the label words' rows of the output layer are used (never the full vocabulary), plus the
output bias and logit soft-capping where the model has them. A log-probability also needs the
normaliser log Z over the vocabulary at its position; wherever that normaliser is the same for
every word of an example it adds the same constant to every label's score, which no softmax over
labels can see, so it is skipped. That holds for a word's first token in a causal LM (all words
are predicted from the same prefix) and for every mask of a masked LM when all words have the same
number of tokens. Only the remaining positions (later tokens of multi-token words, text after the
mask) project onto the full vocabulary, and only there. `full_vocabulary_word_scores` computes the
same scores the naive way (all logits of the model, then index), as a reference.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .backbones import Backbone
from .errors import UserError
from .patterns import Rendered
from .verbalizers import LabelWords

# ---------------------------------------------------------------- layout: rows and targets


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

    def to_batch(self, pad_id: int) -> dict:
        longest = max(len(tokens) for tokens in self.rows)
        input_ids = torch.full((len(self.rows), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(self.rows), longest), dtype=torch.long)
        for i, tokens in enumerate(self.rows):  # right padding: position ids stay those of an unpadded row
            input_ids[i, : len(tokens)] = torch.tensor(tokens)
            attention_mask[i, : len(tokens)] = 1
        row, position, token, slot, normalize = zip(*self.targets)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target_row": torch.tensor(row),
            "target_position": torch.tensor(position),
            "target_token": torch.tensor(token),
            "target_slot": torch.tensor(slot),
            "target_normalize": torch.tensor(normalize),
            "num_examples": self.num_examples,
            "num_words": self.num_words,
        }
        if any(self.soft):
            soft_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            for i, positions in enumerate(self.soft):
                soft_mask[i, positions] = True
            batch["soft_mask"] = soft_mask
        return batch


def _shifted(rendered: Rendered, middle: int) -> list[int]:
    """Soft-token positions in prefix + `middle` tokens + suffix."""
    return rendered.soft_in_prefix + [len(rendered.prefix) + middle + i for i in rendered.soft_in_suffix]


def masked_lm_batch(rendered: list[Rendered], words: LabelWords, mask_id: int, pad_id: int) -> dict:
    """Rows prefix + N masks + suffix, one per word length N; targets: each word's tokens at its masks."""
    layout = _Layout(len(rendered), len(words))
    # With one word length, every word is read at the same masks of the same row: their normalisers
    # are shared and cancel between labels.
    normalize = len({len(ids) for ids in words.token_ids}) > 1
    for example, r in enumerate(rendered):
        for word, ids in enumerate(words.token_ids):
            row = layout.row(example, r.prefix + [mask_id] * len(ids) + r.suffix, _shifted(r, len(ids)))
            for k, token in enumerate(ids):
                layout.target(row, len(r.prefix) + k, token, example, word, normalize)
    return layout.to_batch(pad_id)


def causal_lm_batch(rendered: list[Rendered], words: LabelWords, pad_id: int) -> dict:
    """Rows prefix + word + suffix (without the last token, which nothing reads); targets: the
    word's tokens and the suffix's, each predicted from the position before it."""
    layout = _Layout(len(rendered), len(words))
    for example, r in enumerate(rendered):
        if not r.prefix:
            raise UserError("a causal LM needs text before {mask}, and an example left none there: add words before the mask")
        for word, ids in enumerate(words.token_ids):
            sequence = r.prefix + list(ids) + r.suffix
            row = layout.row(example, sequence[:-1], _shifted(r, len(ids)))
            for position in range(len(r.prefix), len(sequence)):
                # The first word token is predicted from the prefix alone: the same normaliser for every word.
                normalize = position > len(r.prefix)
                layout.target(row, position - 1, sequence[position], example, word, normalize)
    return layout.to_batch(pad_id)


# ---------------------------------------------------------------- scoring


class LabelWordScorer:
    """Word scores [B, W] from a batch laid out above, reading only the label words' output rows."""

    def __init__(self, backbone: Backbone):
        require_language_model(backbone)
        self.kind = backbone.kind
        self.model = backbone.model
        self.body = backbone.body
        self.output = self.model.get_output_embeddings()
        if self.output is None:
            raise UserError(f"model '{backbone.name}' exposes no output layer to read label words from")
        self.softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        self._head, self._decoder_parent, self._decoder_name = _mlm_head(self.model) if self.kind == "mlm" else (None,) * 3

    # -- the cheap path: label-word rows only ------------------------------------------
    def word_scores(self, batch: dict, inputs_embeds: torch.Tensor | None = None, **body_inputs) -> torch.Tensor:
        return self.word_scores_from_hidden(self.hidden_states(batch, inputs_embeds, **body_inputs), batch)

    def word_scores_from_hidden(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        picked = self._transform(hidden[batch["target_row"], batch["target_position"]])  # [K, H]
        tokens = batch["target_token"]
        scores = (picked * self.output.weight[tokens]).sum(dim=-1)
        if self.output.bias is not None:
            scores = scores + self.output.bias[tokens]
        scores = self._softcapped(scores)
        normalize = batch["target_normalize"]
        if normalize.any():
            scores = scores - self._log_normalisers(picked, batch)
        return self._per_word(scores, batch)

    def vocabulary_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] over the whole vocabulary from hidden states [N, H] read at the answer's
        position: the open-vocabulary readout of knowledge probing, where every token is a label."""
        logits = self.output(self._transform(hidden))
        return self._softcapped(logits)

    def hidden_states(self, batch: dict, inputs_embeds: torch.Tensor | None = None, **body_inputs) -> torch.Tensor:
        """The body's last hidden states [R, T, H] (after the final norm), from ids or from embeddings.
        `body_inputs` go to the body too and replace the batch's own (deep prompts pass their key/value
        cache and an attention mask that covers it)."""
        inputs = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch["input_ids"]}
        extra = {"use_cache": False} if self.kind == "causal" else {}
        arguments = {**inputs, "attention_mask": batch["attention_mask"], **extra, **body_inputs}
        return self.body(**arguments).last_hidden_state

    def _transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """A masked LM's head transform (dense, activation, norm) without its vocabulary projection."""
        if self._head is None:
            return hidden
        with _bypassed(self._decoder_parent, self._decoder_name):
            return self._head(hidden)

    def _log_normalisers(self, picked: torch.Tensor, batch: dict) -> torch.Tensor:
        """log Z over the full vocabulary, computed once per distinct (row, position) that needs it."""
        normalize = batch["target_normalize"]
        key = batch["target_row"] * batch["input_ids"].size(1) + batch["target_position"]
        unique, inverse = torch.unique(key[normalize], return_inverse=True)
        first = torch.zeros(len(unique), dtype=torch.long, device=key.device)
        first.scatter_(0, inverse, torch.nonzero(normalize).squeeze(1))
        log_z = self._softcapped(self.output(picked[first])).logsumexp(dim=-1)
        out = torch.zeros_like(normalize, dtype=log_z.dtype)
        out[normalize] = log_z[inverse]
        return out

    def _softcapped(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.softcap:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    @staticmethod
    def _per_word(scores: torch.Tensor, batch: dict) -> torch.Tensor:
        examples, words = batch["num_examples"], batch["num_words"]
        total = torch.zeros(examples * words, dtype=scores.dtype, device=scores.device)
        return total.index_add(0, batch["target_slot"], scores).view(examples, words)

    # -- the reference path: the model's full logits, then index ------------------------
    def full_vocabulary_word_scores(self, batch: dict) -> torch.Tensor:
        """The same scores from the model's own logits over the whole vocabulary at every position."""
        extra = {"use_cache": False} if self.kind == "causal" else {}
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
        picked = logits[batch["target_row"], batch["target_position"]]  # [K, V]
        scores = picked.gather(1, batch["target_token"].unsqueeze(1)).squeeze(1)
        scores = scores - picked.logsumexp(dim=-1) * batch["target_normalize"]
        return self._per_word(scores, batch)


def require_language_model(backbone: Backbone) -> None:
    if backbone.kind not in ("mlm", "causal"):
        raise UserError(
            f"model '{backbone.name}' has no language-model head (kind {backbone.kind}); "
            "prompt methods need a masked or causal LM (use --method head)"
        )


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
