"""A method's trainable weights read back (`Method.load_trainable_state_dict`, what predict, eval and
resume load from a run folder): values copied in the method's dtype; a state naming parameters the
method lacks, or of another shape, refused in one line that names them, before anything is loaded."""

import pytest
import torch

from pretune.errors import UserError
from pretune.methods import HeadConfig, HeadMethod
from pretune.tuning import BodyTraining


@pytest.fixture
def method(tiny_encoder, task):
    return HeadMethod(tiny_encoder, task, HeadConfig(), BodyTraining.parse("frozen"))


def head_state(method) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}


def test_a_state_is_copied_in_by_value_in_the_method_s_dtype(method):
    state = {name: torch.full_like(tensor, 0.25, dtype=torch.float64) for name, tensor in head_state(method).items()}
    method.load_trainable_state_dict(state)
    for tensor in head_state(method).values():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, torch.full_like(tensor, 0.25))


def test_unknown_names_are_refused_naming_the_first_three_in_order(method):
    state = {**head_state(method), "z.weight": torch.zeros(1), "b.weight": torch.zeros(1),
             "a.weight": torch.zeros(1), "c.weight": torch.zeros(1)}
    with pytest.raises(UserError) as refused:
        method.load_trainable_state_dict(state)
    assert str(refused.value) == "weights for parameters this method does not have: a.weight, b.weight, c.weight"


def test_a_wrong_shape_is_refused_naming_both_shapes_and_nothing_is_loaded(method):
    before = head_state(method)
    first, second = sorted(before)[:2]
    state = {first: torch.ones_like(before[first]), second: torch.zeros(3, 3, 3)}
    with pytest.raises(UserError) as refused:
        method.load_trainable_state_dict(state)
    assert str(refused.value) == f"weights {second} have shape [3, 3, 3], the method's {list(before[second].shape)}"
    assert torch.equal(head_state(method)[first], before[first])  # checked whole before the first copy
