"""architecture() and load_state_resizing(): checkpoints of models whose widths changed."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from surgery_helpers import assert_same, fingerprint, train_step
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, resnet18, small_batch

from weightslab.errors import ConfigurationError
from weightslab.surgery import TrackingMode


def _edited(model_cls, batch):
    torch.manual_seed(0)
    model = model_cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    model.tracking_mode = TrackingMode.TRAIN
    train_step(model, optimizer, *batch)
    model.prune(layer_index=1, neuron_indices={0})
    model.add_neurons(layer_index=0, neuron_count=3)
    model.layers[1].set_per_incoming_neuron_learning_rate({1}, lr=0.5)
    model.freeze_layers_up_to_idx(0)
    train_step(model, optimizer, *batch)
    return model, optimizer


@pytest.mark.parametrize("model_cls,batch_fn", [(MNISTModel, mnist_batch), (ConvBNModel, small_batch)])
def test_load_state_resizing_round_trips_an_edited_checkpoint(model_cls, batch_fn):
    batch = batch_fn(8)
    edited, edited_optimizer = _edited(model_cls, batch)
    state = copy.deepcopy(edited.state_dict())
    optimizer_state = copy.deepcopy(edited_optimizer.state_dict())
    json.dumps(edited.architecture())

    torch.manual_seed(1)
    fresh = model_cls()
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh.attach_optimizer(fresh_optimizer)
    train_step(fresh, fresh_optimizer, *batch)
    params = list(fresh.parameters())
    fresh.load_state_resizing(state)
    fresh_optimizer.load_state_dict(optimizer_state)
    fresh.tracking_mode = TrackingMode.TRAIN  # a setting of the running experiment, not model state
    assert all(a is b for a, b in zip(params, fresh.parameters()))  # same Parameter objects
    assert fresh.architecture() == edited.architecture()
    assert_same(fresh.state_dict(), state)
    assert [layer.neuron_count for layer in fresh.layers] == [layer.neuron_count for layer in edited.layers]
    assert not fresh.layers[0].weight.requires_grad  # the frozen flag came with the checkpoint
    # Both continue bit-identically (parameters, moments, multipliers, Adam birth steps).
    train_step(edited, edited_optimizer, *batch)
    train_step(fresh, fresh_optimizer, *batch)
    assert_same(fresh.state_dict(), edited.state_dict())
    # ...and the loaded model can be edited again (it re-traced).
    fresh.prune(layer_index=1, neuron_indices={1})


def test_an_edited_model_loads_an_older_wider_checkpoint():
    torch.manual_seed(0)
    model = resnet18()
    x = torch.randn(2, 3, 32, 32)
    model(x)
    model.eval()
    original = copy.deepcopy(model.state_dict())
    expected = model(x)
    model.prune(layer_index=2, neuron_indices={0, 1, 2})
    model.add_neurons(layer_index=6, neuron_count=2)
    model.load_state_resizing(original)
    assert_same(model.state_dict(), original)
    assert torch.equal(model(x), expected)


def test_load_state_resizing_refuses_a_foreign_state_dict_unchanged():
    torch.manual_seed(0)
    model = MNISTModel()
    before = fingerprint(model)
    bad = dict(model.state_dict())
    bad.pop("layer0.bias")
    bad["extra"] = torch.zeros(1)
    with pytest.raises(ConfigurationError, match="missing layer0.bias"):
        model.load_state_resizing(bad)
    assert_same(before, fingerprint(model))


def test_architecture_lists_parameter_shapes_by_layer_name():
    assert MNISTModel().architecture() == {
        "layer0": {"weight": [2, 1, 3, 3], "bias": [2]},
        "layer1": {"weight": [4, 2, 3, 3], "bias": [4]},
        "layer2": {"weight": [10, 4, 3, 3], "bias": [10]},
        "out": {"weight": [10, 10], "bias": [10]},
    }
