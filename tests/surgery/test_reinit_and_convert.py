"""reinit_neurons, and convert_to_ops on existing models."""

from __future__ import annotations

import pytest
import torch
import torchvision
from surgery_helpers import train_step
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, small_batch

from weightslab.errors import ConfigurationError
from weightslab.surgery import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NetworkWithOps,
    convert_to_ops,
)


def _trained_mnist():
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    x, y = mnist_batch(8)
    for _ in range(3):
        train_step(model, optimizer, x, y)
    return model, optimizer


def test_reinit_redraws_chosen_rows_like_the_initializer_and_resets_their_optimizer_state():
    model, optimizer = _trained_mnist()
    weight = model.layer2.weight.detach().clone()
    moments = optimizer.state[model.layer2.weight]["exp_avg"].clone()
    model.reinit_neurons(layer_index=2, neuron_indices={5, 6}, seed=3)
    new = model.layer2.weight.detach()
    keep = [i for i in range(10) if i not in (5, 6)]
    assert torch.equal(new[keep], weight[keep])
    assert not torch.equal(new[5], weight[5])
    assert new[[5, 6]].abs().max() <= 1 / (4 * 9) ** 0.5
    state = optimizer.state[model.layer2.weight]
    assert not state["exp_avg"][[5, 6]].any() and not state["exp_avg_sq"][[5, 6]].any()
    assert torch.equal(state["exp_avg"][keep], moments[keep])
    assert model.layer2.row_birth_step[[5, 6]].tolist() == [3, 3]


def test_perturbation_moves_each_weight_by_at_most_ratio_times_its_magnitude():
    model, _ = _trained_mnist()
    weight = model.layer1.weight.detach().clone()
    bias = model.layer1.bias.detach().clone()
    model.reinit_neurons(layer_index=1, neuron_indices={0, 2}, perturbation_ratio=0.2, seed=1)
    moved = (model.layer1.weight.detach() - weight).abs()
    assert (moved[[0, 2]] <= 0.2 * weight[[0, 2]].abs() + 1e-7).all() and moved[[0, 2]].sum() > 0
    assert not moved[[1, 3]].any()
    assert ((model.layer1.bias.detach() - bias).abs()[[0, 2]] <= 0.2 * bias[[0, 2]].abs() + 1e-7).all()


def test_reinit_of_a_batch_norm_resets_scale_shift_and_running_statistics():
    torch.manual_seed(0)
    model = ConvBNModel()
    model.layers = [model.conv0, model.bn0, model.conv1, model.bn1, model.fc, model.out]
    model(small_batch(4)[0])
    bn = model.bn0
    index = 1
    with torch.no_grad():
        bn.weight.fill_(3.0)
    model.reinit_neurons(layer_index=index, neuron_indices={1})
    assert bn.weight[1] == 1.0 and bn.bias[1] == 0.0 and bn.weight[0] == 3.0
    assert bn.running_mean[1] == 0.0 and bn.running_var[1] == 1.0


def test_convert_keeps_parameters_outputs_and_an_existing_optimizer():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    params = list(plain.parameters())
    running_mean = plain.bn1.running_mean
    x = torch.randn(2, 3, 32, 32)
    plain.eval()
    expected = plain(x)
    rng = torch.random.get_rng_state()
    model = convert_to_ops(plain)
    assert torch.equal(rng, torch.random.get_rng_state())  # conversion draws no random numbers
    assert isinstance(model, NetworkWithOps)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert model.model.bn1.running_mean is running_mean
    assert isinstance(model.model.conv1, Conv2dWithNeuronOps)
    assert isinstance(model.model.bn1, BatchNorm2dWithNeuronOps)
    assert isinstance(model.model.fc, LinearWithNeuronOps)
    assert len(model.layers) == 20 + 20 + 1
    assert torch.equal(model(x), expected)
    model.train()
    model.attach_optimizer(optimizer)
    train_step(model, optimizer, x, torch.tensor([1, 2]))
    model.prune(layer_index=0, neuron_indices={0})
    train_step(model, optimizer, x, torch.tensor([1, 2]))


def test_convert_is_in_place_for_a_network_with_ops():
    model = MNISTModel()
    assert convert_to_ops(model) is model


@pytest.mark.parametrize("bad", [object(), LinearWithNeuronOps(2, 2)])
def test_convert_refuses_what_is_not_a_model(bad):
    with pytest.raises(ConfigurationError):
        convert_to_ops(bad)
