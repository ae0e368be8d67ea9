"""Shared fixtures: tiny random models built in memory (fast unit tests) and the real packaged
models (integration tests: every method must also run on a real pretrained model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

# One thread per process: the tests' models are small, several tests start child processes
# (torchrun, the benchmark worker), and oversubscribed cores make torch many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the Hugging Face hub: a hub id fails at once instead of after half a minute of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pretune.backbones import Backbone, load_backbone, resolve  # noqa: E402
from pretune.data import Example, Task  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "src" / "pretune" / "examples" / "sentiment"

POSITIVE = ["a warm and funny film", "great acting and a lovely story", "i loved every minute", "a delight"]
NEGATIVE = ["a dull and lifeless film", "bad acting and a silly plot", "i hated every minute", "a bore"]


def sentiment_task(n_test: int = 8) -> Task:
    train = [Example(t, label="positive") for t in POSITIVE] + [Example(t, label="negative") for t in NEGATIVE]
    return Task("sst-2", ["negative", "positive"], "accuracy", train=train, dev=train[:], test=train[:n_test])


@pytest.fixture
def task() -> Task:
    return sentiment_task()


@pytest.fixture
def task_folder(tmp_path) -> Path:
    """A task folder in the shared layout, written from the in-memory examples."""
    return write_task_folder(tmp_path / "task")


def write_task_folder(folder: Path) -> Path:
    folder.mkdir()
    data = sentiment_task()
    for split in ("train", "dev", "test"):
        rows = [{"text": e.text, "label": e.label} for e in getattr(data, split)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.json").write_text(json.dumps({"task": "sst-2", "labels": data.labels, "metric": "accuracy"}))
    return folder


# ---------------------------------------------------------------- tiny random models


def _tiny(kind: str, packaged: str) -> Backbone:
    """A 2-layer random model of the given kind with a real tokenizer (from a packaged model)."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve(packaged))
    vocab = len(tokenizer)
    if kind == "causal":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256,
        )
        model = BertForMaskedLM(config) if kind == "mlm" else BertModel(config)
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, kind=kind, name=f"tiny-{kind}", path="")


@pytest.fixture
def tiny_mlm() -> Backbone:
    return _tiny("mlm", "bert-tiny")


@pytest.fixture
def tiny_encoder() -> Backbone:
    return _tiny("encoder", "bert-tiny")


@pytest.fixture
def tiny_causal() -> Backbone:
    return _tiny("causal", "smollm2-135m")


@pytest.fixture
def causal_folder(tmp_path, tiny_causal) -> Path:
    """The tiny causal LM saved as a model folder, for the command line."""
    folder = tmp_path / "tiny-causal"
    tiny_causal.model.save_pretrained(folder)
    tiny_causal.tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- real pretrained models


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return resolve("smollm2-135m")


@pytest.fixture
def smollm2() -> Backbone:
    """The real smollm2-135m (fresh each time: training changes its weights)."""
    return load_backbone("smollm2-135m")


@pytest.fixture
def bert_tiny() -> Backbone:
    return load_backbone("bert-tiny")


@pytest.fixture
def minilm() -> Backbone:
    return load_backbone("minilm-l6")


# ---------------------------------------------------------------- interrupted runs


class Killed(Exception):
    """Stands in for a kill: raised right after the checkpoint of a step was written."""


def kill_after_checkpoint(monkeypatch, step: int) -> None:
    """Runs started from now on stop (raise `Killed`) right after writing the checkpoint of `step`."""
    from pretune.training.checkpoint import Checkpointer

    original = Checkpointer.save

    def save_then_die(self, snapshot, config):
        original(self, snapshot, config)
        if snapshot.loop["step"] == step:
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
