"""Per-neuron learning rates multiply the optimizer's update exactly, Adam included."""

from __future__ import annotations

import copy

import pytest
import torch
from surgery_helpers import OPTIMIZERS, train_step
from surgery_models import MNISTModel, mnist_batch

from weightslab.surgery import LinearWithNeuronOps

RATES = {0: 0.0, 2: 0.5, 3: 2.0}


def _pair(optimizer_name, device):
    """Two identical float64 models; A has the optimizer attached (hooks), B trains plain."""
    models, optimizers = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = MNISTModel().double().to(device)
        models.append(model)
        optimizers.append(OPTIMIZERS[optimizer_name](model.parameters()))
    models[0].attach_optimizer(optimizers[0])
    return models, optimizers


def _expected_multiplier(kind: str, shape: torch.Size, name: str) -> torch.Tensor:
    m = torch.ones(shape, dtype=torch.float64)
    for index, rate in RATES.items():
        if kind == "rows":
            m[index] = rate
        elif name.endswith("weight"):
            m[:, index] = rate
    return m


@pytest.mark.parametrize("kind", ["rows", "columns"])
@pytest.mark.parametrize("optimizer_name", ["adam", "adamw", "sgd_momentum"])
def test_learning_rate_multiplies_the_optimizer_update_exactly(optimizer_name, kind, device):
    (a, b), (opt_a, opt_b) = _pair(optimizer_name, device)
    x, y = (t.to(device) for t in mnist_batch(16))
    x = x.double()
    for _ in range(3):  # non-trivial moments first
        train_step(a, opt_a, x, y)
        train_step(b, opt_b, x, y)
    if kind == "rows":
        for index, rate in RATES.items():
            a.layers[2].set_per_neuron_learning_rate({index}, lr=rate)
    else:
        for index, rate in RATES.items():
            a.layers[2].set_per_incoming_neuron_learning_rate({index}, lr=rate)
    for _ in range(4):
        # B restarts from A's exact state each step, so "the update the optimizer would have made" is B's.
        b.load_state_dict(a.state_dict())
        opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # state_dict() shares tensors
        before = {n: p.detach().clone() for n, p in a.named_parameters()}
        train_step(a, opt_a, x, y)
        train_step(b, opt_b, x, y)
        for name, p in a.named_parameters():
            realised = p.detach() - before[name]
            plain = dict(b.named_parameters())[name].detach() - before[name]
            if name.startswith("layer2."):
                plain = plain * _expected_multiplier(kind, p.shape, name).to(device)
            scale = plain.abs().max().clamp_min(1e-30)
            assert float((realised - plain).abs().max() / scale) <= 1e-6, name
        frozen = (lambda w: w[0]) if kind == "rows" else (lambda w: w[:, 0])  # lr=0.0: not a bit moves
        assert torch.equal(frozen(a.layer2.weight), frozen(before["layer2.weight"]))


def test_learning_rate_settings_follow_neurons_through_prune_and_add():
    torch.manual_seed(0)
    model = MNISTModel()
    model(mnist_batch(2)[0])
    model.layers[1].set_per_neuron_learning_rate({1, 3}, lr=0.25)
    model.layers[2].set_per_incoming_neuron_learning_rate({3}, lr=0.5)
    model.prune(layer_index=1, neuron_indices={0})
    assert model.layer1.lr_row_multiplier.tolist() == [0.25, 1.0, 0.25]
    assert model.layer2.lr_col_multiplier.tolist() == [1.0, 1.0, 0.5]
    model.add_neurons(layer_index=1, neuron_count=2)
    assert model.layer1.lr_row_multiplier.tolist() == [0.25, 1.0, 0.25, 1.0, 1.0]
    assert model.layer2.lr_col_multiplier.tolist() == [1.0, 1.0, 0.5, 1.0, 1.0]


def test_zero_learning_rate_keeps_neurons_bit_identical_under_adamw():
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    model.attach_optimizer(optimizer)
    x, y = mnist_batch(16)
    model.layers[1].set_per_neuron_learning_rate({0, 1}, lr=0.0)
    rows = model.layer1.weight[:2].detach().clone()
    for _ in range(20):
        train_step(model, optimizer, x, y)
    assert torch.equal(model.layer1.weight[:2], rows)
    assert not torch.equal(model.layer1.weight[2:], model.layer1.weight[2:].detach() * 0 + rows[0].detach())


def test_standalone_layer_applies_the_multiplier_without_a_network():
    layer = LinearWithNeuronOps(3, 2)
    layer.set_per_neuron_learning_rate([1], lr=0.5)
    layer.set_per_incoming_neuron_learning_rate([0, 2], lr=0.0)
    assert layer.lr_row_multiplier.tolist() == [1.0, 0.5]
    assert layer.lr_col_multiplier.tolist() == [0.0, 1.0, 0.0]
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.0]])
    assert torch.equal(layer.step_multiplier("weight", layer.weight.detach()), expected)
