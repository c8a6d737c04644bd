"""add_neurons: function-preserving, trainable, widening the whole coupled group."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import loss_of, param_count
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, resnet18, small_batch


def _relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float(((after - before).abs().max() / before.abs().max()).detach())


@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_add_keeps_tutorial_model_output(layer_index, device):
    torch.manual_seed(0)
    model = MNISTModel().to(device)
    x, _ = mnist_batch(16)
    x = x.to(device)
    before = model(x)
    model.add_neurons(layer_index=layer_index, neuron_count=4)
    assert model.layers[layer_index].neuron_count == [2, 4, 10][layer_index] + 4
    assert _relative_change(before, model(x)) <= 1e-6


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_add_keeps_conv_bn_model_output_in_train_and_eval_mode(layer_index, training):
    torch.manual_seed(0)
    model = ConvBNModel().train(training)
    x, _ = small_batch(16)
    before = model(x)
    model.add_neurons(layer_index=layer_index, neuron_count=3)
    assert _relative_change(before, model(x)) <= 1e-6


@pytest.mark.parametrize("training", [True, False])
def test_add_keeps_resnet_output_at_residual_and_inner_layers(training):
    torch.manual_seed(0)
    model = resnet18().train(training)
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    names = {name: i for i, name in enumerate(model.architecture())}  # every ops layer, in layer order
    for name in ("model.layer1.0.conv2", "model.layer2.0.conv1", "model.layer3.0.downsample.0"):
        model.add_neurons(layer_index=names[name], neuron_count=2)
    assert model.model.layer1[1].conv2.out_channels == 66  # the whole residual stream widened
    assert model.model.conv1.out_channels == 66
    assert model.model.layer3[1].conv2.out_channels == 258
    assert model.model.fc.in_features == 512
    assert _relative_change(before, model(x)) <= 1e-6



def test_new_neurons_receive_gradient():
    torch.manual_seed(0)
    model = MNISTModel()
    x, y = mnist_batch(32)
    model(x)
    model.add_neurons(layer_index=1, neuron_count=3, seed=0)  # fixed draw: a neuron can be born dead
    loss_of(model, x, y).backward()
    # Outgoing weights start at zero but get gradient at once...
    outgoing = model.layer2.weight.grad[:, 4:]
    assert (outgoing.abs().flatten(1).sum(1) > 0).any()
    assert all(outgoing[:, j].abs().sum() > 0 for j in range(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    optimizer.zero_grad()
    loss_of(model, x, y).backward()
    # ...and once they moved, the new neurons' incoming weights do too.
    incoming = model.layer1.weight.grad[4:]
    assert all(incoming[j].abs().sum() > 0 for j in range(3))


def test_add_draws_incoming_weights_and_zero_outgoing_weights():
    torch.manual_seed(0)
    model = ConvBNModel()
    x, _ = small_batch(4)
    model(x)
    old_w = model.conv1.weight.detach().clone()
    old_fc = model.fc.weight.detach().clone()
    before = param_count(model)
    model.add_neurons(layer_index=1, neuron_count=2, seed=7)
    assert torch.equal(model.conv1.weight[:8], old_w)
    bound = 1 / (6 * 9) ** 0.5
    new_rows = model.conv1.weight[8:]
    assert new_rows.abs().max() <= bound and new_rows.abs().sum() > 0
    assert torch.equal(model.bn1.weight[8:], torch.ones(2)) and torch.equal(model.bn1.bias[8:], torch.zeros(2))
    # conv1 → bn1 → pool(4×4) → flatten: each channel is a block of 16 fc columns, new blocks at the end.
    assert model.fc.weight.shape == (12, 160)
    assert torch.equal(model.fc.weight[:, :128], old_fc)
    assert torch.equal(model.fc.weight[:, 128:], torch.zeros(12, 32))
    added = 2 * (6 * 9 + 1) + 2 * 2 + 12 * 32
    assert param_count(model) == before + added


def test_add_with_the_same_seed_draws_the_same_weights():
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MNISTModel()
        model(mnist_batch(2)[0])
        model.add_neurons(layer_index=0, neuron_count=2, seed=123)
        weights.append(model.layer0.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
