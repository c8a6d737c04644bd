"""Dependencies are inferred by tracing: flatten blocks, concatenation offsets, residual groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from surgery_helpers import assert_same, fingerprint
from surgery_models import MNISTModel, mnist_batch, resnet18

from weightslab.errors import SurgeryError
from weightslab.surgery import Conv2dWithNeuronOps, LinearWithNeuronOps, NetworkWithOps


class CatModel(NetworkWithOps):
    def __init__(self) -> None:
        super().__init__()
        self.a = Conv2dWithNeuronOps(1, 3, 3, padding=1)
        self.b = Conv2dWithNeuronOps(1, 4, 3, padding=1)
        self.merge = Conv2dWithNeuronOps(7, 5, 1)
        self.head = LinearWithNeuronOps(5, 2)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.head(F.relu(self.merge(y)).mean((2, 3)))


class ViewFlattenModel(NetworkWithOps):
    """conv → 2×2 maps → x.view(x.size(0), -1) → Linear: 4 columns per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dWithNeuronOps(1, 3, 3)
        self.fc = LinearWithNeuronOps(12, 4)
        self.out = LinearWithNeuronOps(4, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        x = x.view(x.size(0), -1)
        return self.out(F.relu(self.fc(x)))


class CumsumModel(NetworkWithOps):
    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dWithNeuronOps(1, 3, 3)
        self.out = LinearWithNeuronOps(3, 2)

    def forward(self, x):
        return self.out(torch.cumsum(self.conv(x), dim=1).mean((2, 3)))


def test_tutorial_model_graph_links_each_layer_to_the_next():
    model = MNISTModel()
    model(mnist_batch(2)[0])
    graph = model.dependency_graph()
    for producer, consumer in (("layer0", "layer1"), ("layer1", "layer2"), ("layer2", "out")):
        assert np.array_equal(graph.in_keys[consumer], graph.out_keys[producer])
    assert (graph.in_keys["layer0"] == -1).all()


def test_view_flatten_maps_each_channel_to_a_block_of_columns():
    torch.manual_seed(0)
    model = ViewFlattenModel()
    x = torch.randn(3, 1, 6, 6)
    before = model(x)
    graph = model.dependency_graph()
    assert graph.in_keys["fc"].tolist() == np.repeat(graph.out_keys["conv"], 4).tolist()
    fc = model.fc.weight.detach().clone()
    model.prune(layer_index=0, neuron_indices={1})
    assert torch.equal(model.fc.weight, fc[:, [0, 1, 2, 3, 8, 9, 10, 11]])
    model.add_neurons(layer_index=0, neuron_count=1)
    assert model.fc.in_features == 12 and not model.fc.weight[:, 8:].any()
    model.prune(layer_index=0, neuron_indices={2})  # drop the new one again
    assert torch.equal(model.fc.weight, fc[:, [0, 1, 2, 3, 8, 9, 10, 11]])
    assert model(x).shape == before.shape


def test_concatenation_offsets_follow_prune_and_add():
    torch.manual_seed(0)
    model = CatModel()
    x = torch.randn(2, 1, 5, 5)
    merge = model.merge.weight.detach().clone()
    before = model(x)
    model.prune(layer_index=1, neuron_indices={0})  # b's first channel is column 3 of merge
    assert torch.equal(model.merge.weight, merge[:, [0, 1, 2, 4, 5, 6]])
    model.add_neurons(layer_index=0, neuron_count=2)  # a's new channels land after a's, before b's
    weight = model.merge.weight.detach()
    assert torch.equal(weight[:, [0, 1, 2, 5, 6, 7]], merge[:, [0, 1, 2, 4, 5, 6]])
    assert not weight[:, 3:5].any()
    assert model.a.out_channels == 5 and model.merge.in_channels == 8
    assert model(x).shape == before.shape


def test_concatenation_add_keeps_the_output():
    torch.manual_seed(0)
    model = CatModel()
    x = torch.randn(2, 1, 5, 5)
    before = model(x)
    model.add_neurons(layer_index=1, neuron_count=3)
    assert float(((model(x) - before).abs().max() / before.abs().max()).detach()) <= 1e-6


def test_an_operation_the_tracer_cannot_follow_is_refused_by_name():
    model = CumsumModel()
    model(torch.randn(2, 1, 5, 5))
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match="cumsum"):
        model.prune(layer_index=0, neuron_indices={0})
    assert_same(before, fingerprint(model))


def test_tracing_works_under_no_grad_with_frozen_layers():
    model = MNISTModel()
    model(mnist_batch(2)[0])
    model.freeze_layers_up_to_idx(-1)
    with torch.no_grad():
        model.prune(layer_index=1, neuron_indices={0})
    assert model.layer2.in_channels == 3


def test_resnet_residual_stream_is_one_class_per_channel_index():
    model = resnet18()
    model(torch.randn(2, 3, 32, 32))
    graph = model.dependency_graph()
    stream = ["model.conv1", "model.layer1.0.conv2", "model.layer1.1.conv2"]
    classes = [graph.classes_of(graph.out_keys[name]) for name in stream]
    assert all(np.array_equal(classes[0], c) for c in classes[1:])
    assert len(set(classes[0].tolist())) == 64
    inner = graph.classes_of(graph.out_keys["model.layer1.0.conv1"])
    assert not set(inner.tolist()) & set(classes[0].tolist())
    assert graph.bn_origin["model.layer1.0.bn2"] == "model.layer1.0.conv2"


class ModuleListModel(NetworkWithOps):
    def __init__(self) -> None:
        super().__init__()
        self.head = LinearWithNeuronOps(4, 2)  # registered first, listed last
        self.layers = torch.nn.ModuleList([LinearWithNeuronOps(3, 5), LinearWithNeuronOps(5, 4), self.head])

    def forward(self, x):
        return self.head(F.relu(self.layers[1](F.relu(self.layers[0](x)))))


def test_layers_may_be_a_module_list_and_it_defines_the_order():
    model = ModuleListModel()
    x = torch.randn(2, 3)
    before = model(x)
    assert model.layers[2] is model.head
    model.add_neurons(layer_index=0, neuron_count=2)
    model.prune(layer_index=1, neuron_indices={0})
    assert [layer.neuron_count for layer in model.layers] == [7, 3, 2]
    assert model(x).shape == before.shape
