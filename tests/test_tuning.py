import pytest

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
