import pytest
import torch

from pretune.errors import UserError
from pretune.tuning import BodyTraining, apply_body_training


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_parse_modes():
    assert str(BodyTraining.parse("last:2")) == "last:2"
    assert BodyTraining.parse(None).is_frozen
    for bad in ("everything", "last:0", "last:x"):
        with pytest.raises(UserError, match="--train"):
            BodyTraining.parse(bad)


def test_frozen_full_bitfit(tiny_mlm):
    model = tiny_mlm.model
    assert not trainable_names(apply_body_training(model, BodyTraining.parse("frozen")))
    total = len(list(model.parameters()))
    assert len(trainable_names(apply_body_training(model, BodyTraining.parse("full")))) == total
    names = trainable_names(apply_body_training(model, BodyTraining.parse("bitfit")))
    assert names and all(name.endswith("bias") for name in names)


def test_last_layers_leave_embeddings_and_lower_layers_frozen(tiny_causal):
    names = trainable_names(apply_body_training(tiny_causal.model, BodyTraining.parse("last:1")))
    assert any(".layers.1." in n for n in names)
    assert not any(".layers.0." in n for n in names)
    assert not any("embed" in n for n in names)
    assert "model.norm.weight" in names
    with pytest.raises(UserError, match="only 2 layers"):
        apply_body_training(tiny_causal.model, BodyTraining.parse("last:3"))


@pytest.mark.parametrize("fixture", ["tiny_mlm", "tiny_causal"])
def test_lora_through_peft_trains_only_adapters(request, fixture):
    model = request.getfixturevalue(fixture).model
    names = trainable_names(apply_body_training(model, BodyTraining.parse("lora", lora_r=4)))
    assert names and all("lora_" in n for n in names)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)


@pytest.mark.parametrize(("rank", "alpha"), [(4, 12), (2, 2)])
def test_lora_layer_output_is_base_plus_scaled_low_rank_update_by_hand(tiny_mlm, rank, alpha):
    """Each adapted projection computes W x + (alpha / r) B A x, with A of rank r (eval mode: no dropout)."""
    model = apply_body_training(tiny_mlm.model, BodyTraining.parse("lora", lora_r=rank, lora_alpha=alpha))
    model.eval()
    layer = model.bert.encoder.layer[0].attention.self.query
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == (rank, 32) and b.shape == (32, rank)
    torch.manual_seed(1)
    with torch.no_grad():
        b.copy_(torch.randn_like(b))  # B starts at zero: give it values so the update shows
        x = torch.randn(3, 32)
        base = x @ layer.base_layer.weight.T + layer.base_layer.bias
        expected = base + (alpha / rank) * (x @ a.T @ b.T)
        assert torch.allclose(layer(x), expected, atol=1e-5)
        assert (layer(x) - base).abs().max() > 1e-3
