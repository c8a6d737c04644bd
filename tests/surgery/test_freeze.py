"""freeze_layers_up_to_idx / unfreeze_layers_from_idx."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import OPTIMIZERS, loss_of, train_step
from surgery_models import ConvBNModel, small_batch


@pytest.mark.parametrize("optimizer_name", ["adam", "adamw", "sgd_momentum"])
def test_frozen_layers_stay_bit_identical_for_100_steps_and_unfreezing_resumes(optimizer_name, device):
    torch.manual_seed(0)
    model = ConvBNModel().to(device)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    model.attach_optimizer(optimizer)
    x, y = (t.to(device) for t in small_batch(16))
    for _ in range(3):  # momentum and moments are non-zero when the freeze happens
        train_step(model, optimizer, x, y)
    loss_of(model, x, y).backward()  # stale gradients must not leak into the next step
    model.freeze_layers_up_to_idx(1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.split(".")[0] in ("conv0", "bn0", "conv1", "bn1")}
    assert len(frozen) == 8  # both convs and their batch norms (not listed in model.layers)
    others = {n: p.detach().clone() for n, p in model.named_parameters() if n not in frozen}
    optimizer.step()
    for _ in range(100):
        train_step(model, optimizer, x, y)
    params = dict(model.named_parameters())
    for name, value in frozen.items():
        assert torch.equal(params[name], value), name
        assert not params[name].requires_grad
    for name, value in others.items():
        assert not torch.equal(params[name], value), name
    model.unfreeze_layers_from_idx(0)
    train_step(model, optimizer, x, y)
    for name, value in frozen.items():
        assert not torch.equal(params[name], value), name


def test_freeze_is_recorded_in_the_state_dict_and_restored_on_load():
    torch.manual_seed(0)
    model = ConvBNModel()
    model(small_batch(2)[0])
    model.freeze_layers_up_to_idx(0)
    state = model.state_dict()
    assert bool(state["conv0.frozen"]) and bool(state["bn0.frozen"]) and not bool(state["conv1.frozen"])
    other = ConvBNModel()
    other.load_state_dict(state)
    assert not other.conv0.weight.requires_grad and not other.bn0.weight.requires_grad
    assert other.conv1.weight.requires_grad


def test_unfreeze_from_an_index_leaves_earlier_layers_frozen():
    torch.manual_seed(0)
    model = ConvBNModel()
    model(small_batch(2)[0])
    model.freeze_layers_up_to_idx(-1)
    model.unfreeze_layers_from_idx(2)
    assert [layer.is_frozen for layer in model.layers] == [True, True, False, False]
    assert model.bn1.is_frozen and not model.fc.is_frozen
