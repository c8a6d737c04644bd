"""prune: real removal over the coupled group; survivors bit-exact."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import param_count
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, resnet18, small_batch

from weightslab.errors import SurgeryError


def test_prune_drops_exactly_the_removed_slices_of_the_tutorial_model(device):
    torch.manual_seed(0)
    model = MNISTModel().to(device)
    model(mnist_batch(2)[0].to(device))
    w1, b1, w2 = (t.detach().clone() for t in (model.layer1.weight, model.layer1.bias, model.layer2.weight))
    before = param_count(model)
    model.prune(layer_index=1, neuron_indices={1, 3})
    # layer1 loses 2 rows of 2×3×3 weights + bias; layer2 loses 2 input channels of 10×3×3 weights.
    assert param_count(model) == before - 2 * (2 * 9 + 1) - 2 * 10 * 9
    assert (model.layer1.out_channels, model.layer2.in_channels) == (2, 2)
    assert torch.equal(model.layer1.weight, w1[[0, 2]]) and torch.equal(model.layer1.bias, b1[[0, 2]])
    assert torch.equal(model.layer2.weight, w2[:, [0, 2]])


def test_prune_removes_bn_channels_and_flatten_column_blocks():
    torch.manual_seed(0)
    model = ConvBNModel()
    model(small_batch(2)[0])
    fc = model.fc.weight.detach().clone()
    bn_mean = model.bn1.running_mean.clone()
    before = param_count(model)
    model.prune(layer_index=1, neuron_indices={2})
    keep_cols = [c for c in range(128) if not 32 <= c < 48]  # channel 2 = columns 32..47 after flatten
    assert torch.equal(model.fc.weight, fc[:, keep_cols])
    assert model.bn1.num_features == 7
    assert torch.equal(model.bn1.running_mean, bn_mean[[0, 1, 3, 4, 5, 6, 7]])
    assert param_count(model) == before - (6 * 9 + 1) - 2 - 12 * 16


def test_prune_of_a_residual_member_prunes_the_whole_stream_at_the_same_index():
    torch.manual_seed(0)
    model = resnet18()
    model(torch.randn(2, 3, 32, 32))
    net = model.model
    stem = net.conv1.weight.detach().clone()
    inner = net.layer1[1].conv1.weight.detach().clone()
    index = model.layers.index(net.layer1[0].conv2)
    model.prune(layer_index=index, neuron_indices={5})
    keep = [c for c in range(64) if c != 5]
    assert torch.equal(net.conv1.weight, stem[keep])  # the stem feeds the same residual additions
    assert torch.equal(net.layer1[1].conv1.weight, inner[:, keep])
    for bn in (net.bn1, net.layer1[0].bn2, net.layer1[1].bn2):
        assert bn.num_features == 63
    assert net.layer2[0].downsample[0].in_channels == 63
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_prune_through_a_batch_norm_index_prunes_its_producer():
    torch.manual_seed(0)
    model = resnet18()
    model(torch.randn(2, 3, 32, 32))
    net = model.model
    model.prune(layer_index=model.layers.index(net.layer2[0].bn1), neuron_indices={0, 1})
    assert net.layer2[0].conv1.out_channels == 126 and net.layer2[0].conv2.in_channels == 126


@pytest.mark.parametrize("amount", ["one", "quarter"])
def test_resnet18_prunes_at_every_prunable_layer(amount):
    torch.manual_seed(0)
    model = resnet18()
    x = torch.randn(2, 3, 32, 32)
    model(x)
    last = len(model.layers) - 1
    for index in range(last):
        width = model.layers[index].neuron_count
        count = 1 if amount == "one" else max(1, width // 4)
        model.prune(layer_index=index, neuron_indices=set(range(0, 2 * count, 2)) if count * 2 <= width else {0})
        for training in (True, False):
            model.train(training)
            with torch.no_grad():
                assert model(x).shape == (2, 10)
    with pytest.raises(SurgeryError, match="model's output"):
        model.prune(layer_index=last, neuron_indices={0})


def test_prune_refuses_the_output_layer():
    model = MNISTModel()
    model(mnist_batch(2)[0])
    with pytest.raises(SurgeryError, match="model's output"):
        model.prune(layer_index=-1, neuron_indices={0})


def test_training_continues_after_prune_even_when_an_old_graph_is_kept_alive():
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    x, y = mnist_batch(8)
    kept = torch.nn.functional.nll_loss(model(x), y)  # e.g. a loss the training loop keeps for logging
    kept.backward()
    optimizer.step()
    model.prune(layer_index=1, neuron_indices={0})
    model.add_neurons(layer_index=2, neuron_count=2)
    optimizer.zero_grad()
    torch.nn.functional.nll_loss(model(x), y).backward()
    optimizer.step()
    assert model.layer1.weight.grad.shape == (3, 2, 3, 3)
    assert kept.grad_fn is not None
