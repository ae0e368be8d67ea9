"""Classic fine-tuning: a linear or MLP head on a pooled hidden state of the input as it is.

With a frozen body the features never change, so each example is encoded once and the head
trains on the cached vectors: an epoch then costs milliseconds instead of a pass through the body.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batches import FeatureBatch, TokenBatch
from ..errors import UserError
from ..heads import HEADS, build_head
from ..tuning import BodyTraining
from .base import Method, MethodConfig, Rates, body_groups, trainable

POOLINGS = ("auto", "cls", "last", "mean")


@dataclass
class HeadConfig(MethodConfig):
    head: str = "linear"  # linear | mlp
    hidden: int = 256  # width of the MLP head's hidden layer
    dropout: float = 0.1
    pooling: str = "auto"  # auto (cls for masked LMs and encoders, last token for causal LMs) | cls | last | mean
    max_length: int = 256
    encode_batch_size: int = 32
    cache: bool = True  # with a frozen body, encode each example once and train on the cached features

    def default_rates(self, training: BodyTraining) -> Rates:
        return Rates(own=1e-3, body=2e-5)

    def validate(self, task=None) -> None:
        if self.head not in HEADS:
            raise UserError(f"unknown --head '{self.head}' (choose linear or mlp)")
        if self.pooling not in POOLINGS:
            raise UserError(f"unknown --pooling '{self.pooling}' (choose one of {', '.join(POOLINGS)})")
        if self.hidden < 1:
            raise UserError(f"--hidden must be at least 1, got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")


class HeadMethod(Method):
    name = "head"
    config_class = HeadConfig

    def __init__(self, backbone, task, config: HeadConfig, training):
        config.validate()
        super().__init__(backbone, task, config, training)
        self.pooling = config.pooling if config.pooling != "auto" else ("last" if backbone.kind == "causal" else "cls")
        self.head = nn.Sequential(*build_head(backbone.hidden_size, task.num_labels, config.head, config.hidden, config.dropout))
        self.uses_cache = training.is_frozen and config.cache
        self.pad_id = backbone.tokenizer.pad_token_id

    # -- featurize: token ids, or cached features when the body is frozen -----------
    def featurize(self, examples, progress: bool = True) -> list[dict]:
        items = self._tokenize(examples)
        if not self.uses_cache:
            return items
        return self._encode_once(items, progress)

    def _tokenize(self, examples) -> list[dict]:
        tokenizer = self.backbone.tokenizer
        limit = min(self.config.max_length, getattr(tokenizer, "model_max_length", 10**6) or 10**6)
        items = []
        for example in examples:
            encoded = tokenizer(
                example.text, example.text_pair, truncation=True, max_length=limit, return_attention_mask=False
            )
            items.append({"input_ids": encoded["input_ids"]})
        return items

    @torch.inference_mode()
    def _encode_once(self, items: list[dict], progress: bool) -> list[dict]:
        self.model.eval()
        order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
        size = self.config.encode_batch_size
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        features: list = [None] * len(items)
        for chunk in tqdm(chunks, desc="encoding (frozen body, once)", unit="batch", disable=not progress):
            batch = self._pad([items[i] for i in chunk]).to(self.device)
            pooled = self._pooled(batch).float().cpu()
            for row, index in zip(pooled, chunk):
                features[index] = {"features": row}
        return features

    # -- collate and forward ---------------------------------------------------------
    def collate(self, items: list[dict]) -> FeatureBatch | TokenBatch:
        if "features" in items[0]:
            return FeatureBatch(torch.stack([item["features"] for item in items]))
        return self._pad(items)

    def _pad(self, items: list[dict]) -> TokenBatch:
        return TokenBatch.padded([item["input_ids"] for item in items], self.pad_id)

    def forward(self, batch: FeatureBatch | TokenBatch) -> torch.Tensor:
        features = batch.features if isinstance(batch, FeatureBatch) else self._pooled(batch)
        return self.head(features.to(self.head[-1].weight.dtype))

    def _pooled(self, batch: TokenBatch) -> torch.Tensor:
        hidden = self.backbone.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hidden = hidden.last_hidden_state
        mask = batch.attention_mask
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def item_length(self, item: dict) -> int:
        return len(item["input_ids"]) if "input_ids" in item else 0

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"head": trainable(self.head.parameters()), **body_groups(self.model)}
