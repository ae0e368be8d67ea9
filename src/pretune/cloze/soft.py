"""P-tuning's soft tokens: where they start, the encoder that produces them, and materialisation.

A template's soft tokens (`[P]`, `[P*3]`, `[P:great]`, see `patterns`) are one tensor
`[n, hidden]` in the order they appear. An encoder produces them from trainable embeddings:

- `none`  the embeddings themselves are the tokens (Lester et al. 2021's prompt tuning);
- `mlp`   each embedding plus a two-layer MLP of it;
- `lstm`  each embedding plus a bidirectional LSTM over all of them followed by an MLP, as in
          "GPT Understands, Too" (Liu et al. 2021): the tokens are coupled, so what one learns
          moves its neighbours too.

Every encoder adds its output to the embeddings, and its last layer starts at zero: an untrained
prompt *is* its starting embeddings, so `[P:great]` reads exactly like the word " great" until
training moves it, and a template whose soft tokens all start from words scores zero-shot like
the PET pattern with those words. Other soft tokens start at random, drawn with the mean and
spread of the vocabulary's own embeddings.

After training, `materialize` computes the tokens once and drops the encoder: prediction needs no
encoder, and the saved adapter holds only the `[n, hidden]` floats.

As a cloze method's input (`inputs`), the soft tokens enter the model through `inputs_embeds`:
the token ids' embeddings with the soft positions replaced, so any masked or causal LM works.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .pattern import Soft

ENCODERS = ("lstm", "mlp", "none")
STATISTICS_SAMPLE = 4096  # vocabulary rows whose embeddings set the scale of random soft tokens


class SoftPrompt(nn.Module):
    """The soft tokens of one template, `[n, hidden]`: from an encoder while training, then materialised."""

    slot = "soft_prompt"  # the attribute a cloze method holds it under: names its saved weights
    allows_soft_tokens = True
    positions_taken = 0

    def __init__(self, initial: torch.Tensor, encoder: str):
        super().__init__()
        self.embeddings = nn.Parameter(initial.detach().clone().float())
        self.encoder = _encoder(encoder, initial.shape[-1])

    def body_inputs(self, model: nn.Module, batch) -> dict:
        """The ids' embeddings with the soft tokens in place: each row of a batch holds all of the
        template's soft tokens in template order, so the prompt repeats once per row."""
        embeds = model.get_input_embeddings()(batch.input_ids)
        soft = batch.soft_mask
        tokens = self().to(embeds.dtype)
        embeds = embeds.masked_scatter(soft.unsqueeze(-1), tokens.repeat(soft.shape[0], 1))
        return {"inputs_embeds": embeds, "attention_mask": batch.attention_mask}

    @property
    def materialized(self) -> bool:
        return self.encoder is None

    def forward(self) -> torch.Tensor:
        if self.encoder is None:
            return self.embeddings
        return self.embeddings + self.encoder(self.embeddings)

    @torch.no_grad()
    def materialize(self) -> None:
        """Replace the encoder by the tokens it computes now (prediction then needs only these)."""
        if self.encoder is not None:
            tokens = self()
            self.encoder = None
            self.embeddings = nn.Parameter(tokens.detach().clone())


class _Mlp(nn.Module):
    """Per-token MLP: hidden -> hidden -> hidden, the last layer starting at zero."""

    def __init__(self, hidden: int):
        super().__init__()
        self.layers = zero_last(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class _Lstm(nn.Module):
    """A 2-layer bidirectional LSTM over the prompt's tokens, then an MLP (P-tuning's encoder)."""

    def __init__(self, hidden: int):
        super().__init__()
        half = max(1, hidden // 2)
        self.lstm = nn.LSTM(hidden, half, num_layers=2, bidirectional=True, batch_first=True)
        self.mlp = zero_last(nn.Sequential(nn.Linear(2 * half, hidden), nn.ReLU(), nn.Linear(hidden, hidden)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(embeddings.unsqueeze(0))
        return self.mlp(states.squeeze(0))


def _encoder(name: str, hidden: int) -> nn.Module | None:
    return {"lstm": _Lstm, "mlp": _Mlp, "none": lambda _: None}[name](hidden)


def zero_last(layers: nn.Sequential) -> nn.Sequential:
    """Start a residual branch at zero, so that what it adds to is unchanged until training."""
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return layers


# ---------------------------------------------------------------- where the soft tokens start


@torch.no_grad()
def initial_embeddings(soft_tokens: tuple[Soft, ...], embedding: nn.Module, tokenizer) -> torch.Tensor:
    """`[n, hidden]` starting points, in template order: `[P:word]` the embedding of the word's first
    token as it reads inside a sentence (" great"); other soft tokens random, scaled like the
    vocabulary. Embeddings come through the embedding module, so models that scale theirs (Gemma)
    get tokens on the scale they read."""
    weight = embedding.weight
    sample = torch.randperm(weight.shape[0])[:STATISTICS_SAMPLE].to(weight.device)
    vocabulary = embedding(sample).float()
    mean, spread = vocabulary.mean(dim=0), vocabulary.std(dim=0)
    rows = []
    for soft in soft_tokens:
        if soft.init is not None:
            token = _first_token(soft.init, tokenizer)
            rows.append(embedding(torch.tensor([token], device=weight.device)).float())
        else:
            rows.append(mean + spread * torch.randn(soft.count, mean.shape[0], device=weight.device))
    return torch.cat(rows).cpu()


def _first_token(word: str, tokenizer) -> int:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] == tokenizer.unk_token_id:
        raise UserError(f"[P:{word}]: the model's vocabulary has no token for '{word}' to start from")
    return ids[0]
