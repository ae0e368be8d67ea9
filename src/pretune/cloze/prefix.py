"""Deep prompts' keys and values: trainable vectors that every attention layer reads before the input.

Prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022) give each attention layer P extra
keys and values in front of the input's own, as if P tokens came first. They reach the model
through its public cache argument (`cache`, formerly `past_key_values`): a `DynamicCache` filled
per layer with the prefix expanded to the batch, and an attention mask lengthened by P ones. The
model then places the input's positions after the prefix, as it would after P real tokens. A
masked LM takes the cache the same way: BERT's attention concatenates cached keys and values
whether or not it is configured as a decoder (transformers 5.24; PEFT's prefix tuning relies on it too).

So for a causal LM, a prefix that holds the model's own keys and values for some tokens is exactly
those tokens written before the input. That is where a prefix starts (Li & Liang's initialisation
from real words' activations, see `deep_prompt.starting_tokens`): every layer's prefix is then on
the scale that layer's attention expects, and the untrained prefix reads as a harmless text.

With `reparam`, the prefix is key_values + MLP(embeddings) (Li & Liang's reparameterisation, here
as a residual whose last layer starts at zero, so that it starts where the plain prefix does);
`materialize` folds the MLP's output in and drops it, as P-tuning does with its prompt encoder.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .soft import zero_last

REPARAM_HIDDEN = 512  # width of the reparameterisation MLP (P-tuning v2's default)


class Prefix(nn.Module):
    """Keys and values `[layers, 2, heads, length, head_dim]`, optionally through a reparameterisation MLP."""

    slot = "prefix"  # the attribute a cloze method holds it under: names its saved weights
    allows_soft_tokens = False

    def __init__(self, initial: torch.Tensor, hidden_size: int, body: nn.Module, reparam: bool = False):
        super().__init__()
        self.cache_argument = cache_argument(body)
        self.key_values = nn.Parameter(initial.detach().clone().float())
        layers, _, heads, length, head_dim = initial.shape
        self.embeddings = nn.Parameter(torch.randn(length, hidden_size)) if reparam else None
        self.mlp = None
        if reparam:
            self.mlp = zero_last(nn.Sequential(
                nn.Linear(hidden_size, REPARAM_HIDDEN), nn.Tanh(), nn.Linear(REPARAM_HIDDEN, layers * 2 * heads * head_dim)
            ))

    @property
    def length(self) -> int:
        return self.key_values.shape[3]

    @property
    def positions_taken(self) -> int:
        """The model positions the prefix occupies ahead of the input."""
        return self.length

    def body_inputs(self, model: nn.Module, batch) -> dict:
        """The token ids, the prefix as the body's cache, and an attention mask that covers it."""
        mask = batch.attention_mask
        rows = mask.shape[0]
        cache = self.cache(rows, model.config, model.get_input_embeddings().weight.dtype)
        extended = torch.cat([mask.new_ones(rows, self.length), mask], dim=1)
        return {"input_ids": batch.input_ids, self.cache_argument: cache, "attention_mask": extended}

    def forward(self) -> torch.Tensor:
        if self.mlp is None:
            return self.key_values
        layers, _, heads, length, head_dim = self.key_values.shape
        extra = self.mlp(self.embeddings).view(length, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)
        return self.key_values + extra

    @torch.no_grad()
    def materialize(self) -> None:
        if self.mlp is not None:
            key_values = self()
            self.mlp, self.embeddings = None, None
            self.key_values = nn.Parameter(key_values.detach().clone())

    def cache(self, rows: int, config, dtype: torch.dtype):
        """A fresh cache holding the prefix for a batch of `rows` sequences (the model appends to it)."""
        from transformers import DynamicCache

        key_values = self().to(dtype)
        layers = [tuple(kv.unsqueeze(0).expand(rows, -1, -1, -1) for kv in layer) for layer in key_values]
        return DynamicCache(layers, config=config)


@torch.no_grad()
def model_key_values(body: nn.Module, config, token_ids: torch.Tensor) -> torch.Tensor:
    """The keys and values `[layers, 2, heads, length, head_dim]` that each attention layer of the
    model computes for one sequence of tokens."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    body(input_ids=token_ids.unsqueeze(0), **{cache_argument(body): cache})
    return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])


def cache_argument(body: nn.Module) -> str:
    """The name the model's forward takes a cache under (`past_key_values` before transformers renamed it)."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def build_prefix(backbone, model: nn.Module, length: int, reparam: bool) -> Prefix:
    """A prefix of `length` vectors at every layer, starting from the model's own keys and values
    for `starting_tokens`."""
    tokens = starting_tokens(backbone.tokenizer, length)
    initial = model_key_values(backbone.body, model.config, tokens.to(model.device))
    return Prefix(initial, backbone.hidden_size, backbone.body, reparam)


def starting_tokens(tokenizer, count: int) -> torch.Tensor:
    """The tokens whose keys and values a prefix starts from: blank lines where the vocabulary has a
    newline token, since a text after blank lines reads like the text alone, so the untrained prefix
    leaves the pattern's zero-shot answer nearly as it is (random tokens in front can change it);
    otherwise (WordPiece drops newlines) `count` random ordinary tokens."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1 and newline[0] != tokenizer.unk_token_id:
        return torch.full((count,), newline[0])
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    return ordinary[torch.randperm(len(ordinary))[:count]]
