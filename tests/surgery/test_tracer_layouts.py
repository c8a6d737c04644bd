"""The tracer follows reshapes, shuffles, splits and copies; the graph is traced once and then kept.

A network whose every op on channels is width-agnostic gets the graph after an edit
from a pure function (``relayout``); the tests check it against a trace at the new
widths on real architectures, and that refusals name the op that is the real reason.
"""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from surgery_helpers import assert_same, fingerprint

import weightslab.surgery.network_state as network_state
from weightslab.errors import SurgeryError
from weightslab.surgery import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NetworkWithOps,
    convert_to_ops,
)


class ShuffleNet(NetworkWithOps):
    """Two branches, concatenated, then ShuffleNet's channel shuffle (view → transpose → contiguous → view)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = Conv2dWithNeuronOps(3, 4, 3, padding=1)
        self.b = Conv2dWithNeuronOps(3, 4, 3, padding=1)
        self.c = Conv2dWithNeuronOps(8, 6, 1)
        self.head = LinearWithNeuronOps(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        n, channels, h, w = y.size()
        y = y.view(n, 2, channels // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(F.relu(self.c(y)).mean((2, 3)))


class SplitNet(NetworkWithOps):
    """ShuffleNet v2's unit: half the channels pass, the other half go through a conv (``chunk``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dWithNeuronOps(3, 8, 3, padding=1)
        self.branch = Conv2dWithNeuronOps(4, 4, 1)
        self.head = LinearWithNeuronOps(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = F.relu(self.stem(x)).clone().chunk(2, dim=1)
        y = torch.cat([left, F.relu(self.branch(right))], 1)
        return self.head(y.mean((2, 3)))


class ChannelsLastNet(NetworkWithOps):
    """conv → permute to channels-last → contiguous → view(n, -1) → Linear: one column per position and channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dWithNeuronOps(3, 3, 3)
        self.fc = LinearWithNeuronOps(3 * 2 * 2, 4)
        self.out = LinearWithNeuronOps(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x)).permute(0, 2, 3, 1).contiguous()
        return self.out(F.relu(self.fc(y.view(y.size(0), -1))))


def _ready(model: NetworkWithOps, side: int = 4) -> tuple[NetworkWithOps, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, side, side)
    model.eval()
    with torch.no_grad():
        model(x)
    return model, x


def test_a_channel_shuffle_is_followed_and_a_prune_that_keeps_it_valid_reorders_columns_exactly():
    torch.manual_seed(0)
    model, x = _ready(ShuffleNet())
    graph = model.dependency_graph()
    a, b = graph.out_keys["a"], graph.out_keys["b"]
    assert graph.in_keys["c"].tolist() == np.stack([a, b], 1).ravel().tolist()  # a0 b0 a1 b1 ...
    assert not graph.generic  # the shuffle reads the channel count: edits are traced at the new widths
    reference = ShuffleNet()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.a.weight[[1, 3]] = 0
        reference.a.bias[[1, 3]] = 0
    model.prune(layer_index=0, neuron_indices={1, 3})
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-6)


def test_a_prune_that_the_shuffle_cannot_take_is_refused_naming_the_reshape():
    model, _ = _ready(ShuffleNet())
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"`view` in the model raised.*splits them into fixed groups"):
        model.prune(layer_index=0, neuron_indices={1})
    assert_same(before, fingerprint(model))


def test_chunk_halves_are_followed_and_a_prune_from_each_half_keeps_them_apart():
    model, x = _ready(SplitNet())
    graph = model.dependency_graph()
    assert graph.in_keys["branch"].tolist() == graph.out_keys["stem"][4:].tolist()
    branch = model.branch.weight.detach().clone()
    model.prune(layer_index=0, neuron_indices={1, 6})  # one from each half
    assert torch.equal(model.branch.weight, branch[:, [0, 1, 3]])
    with pytest.raises(SurgeryError, match="rearranged"):
        model.prune(layer_index=0, neuron_indices={0})  # would move a channel from one half to the other


def test_contiguous_after_a_permute_is_followed_to_the_columns_of_a_flatten():
    model, x = _ready(ChannelsLastNet())
    fc = model.fc.weight.detach().clone()
    model.prune(layer_index=0, neuron_indices={1})
    keep = [c for c in range(12) if c % 3 != 1]  # channels-last: channel 1 is every third column
    assert torch.equal(model.fc.weight, fc[:, keep])
    before = model(x)
    model.add_neurons(layer_index=0, neuron_count=1, seed=0)
    assert torch.allclose(model(x), before, rtol=0, atol=1e-6)


def test_the_graph_is_traced_once_and_kept_across_edits(monkeypatch):
    calls = []
    real = network_state.trace_network

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(network_state, "trace_network", counting)
    model = convert_to_ops(torchvision.models.resnet18(num_classes=10))
    _ready(model, side=32)
    for _ in range(2):
        model.prune(layer_index=3, neuron_indices={0, 5})
        model.add_neurons(layer_index=7, neuron_count=3, seed=0)
        model.prune(layer_index=0, neuron_indices={1})  # the residual stream of stage 1
    assert len(calls) == 1


def test_regnet_squeeze_excitation_is_refused_for_the_grouped_conv_it_is_coupled_with():
    model = convert_to_ops(torchvision.models.regnet_y_400mf(num_classes=10))
    model, _ = _ready(model, side=32)
    block = model.model.trunk_output.block2[0].f
    index = model.layers.index(block.se.fc2)
    with pytest.raises(SurgeryError) as raised:
        model.prune(layer_index=index, neuron_indices={0})
    message = str(raised.value)
    grouped = next(name for name, module in model.named_modules() if module is block.b[0])
    assert f"{grouped} is a grouped convolution (groups=" in message
    assert "whose output channels" in message and "the same width" in message
    conv = block.b[0]
    groups, width = conv.groups, conv.out_channels // conv.groups
    model.prune(layer_index=index, neuron_indices=set(range(0, conv.out_channels, width)))  # one from every group
    assert conv.out_channels == groups * (width - 1) and block.se.fc2.out_channels == conv.out_channels


def _plans(model: NetworkWithOps, operation) -> tuple[object, object]:
    """The plan from the kept graph (relayout) and from a trace at the new widths."""
    graph = model.dependency_graph()
    outcomes = []
    for generic in (True, False):
        graph.generic = generic
        try:
            outcomes.append(operation())
        except SurgeryError as error:
            outcomes.append(str(error))
    graph.generic = True
    return outcomes[0], outcomes[1]


def _same(fast: object, slow: object) -> bool:
    if isinstance(fast, str) or isinstance(slow, str):
        return fast == slow
    pairs = list(zip(fast.edits, slow.edits)) + list(zip(fast.tensors, slow.tensors))  # type: ignore[attr-defined]
    if len(fast.edits) != len(slow.edits) or len(fast.tensors) != len(slow.tensors):  # type: ignore[attr-defined]
        return False
    for a, b in pairs:
        for field in ("name", "groups", "row_source", "col_source", "group_cols", "source"):
            x, y = getattr(a, field, None), getattr(b, field, None)
            if not (x is y or (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and np.array_equal(x, y)) or x == y):
                return False
    return True


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "densenet121", "convnext_tiny"])
def test_the_graph_computed_without_a_trace_matches_a_trace_at_the_new_widths(name):
    model = convert_to_ops(torchvision.models.get_model(name, weights=None, num_classes=10))
    model, x = _ready(model, side=32)
    assert model.dependency_graph().generic
    layers = model.layers
    picks = sorted(set(np.linspace(0, len(layers) - 2, 5).round().astype(int).tolist()))
    for index in picks:
        width = layers[index].neuron_count
        for operation in (
            partial(model.plan_prune, index, [width // 2]),
            partial(model.plan_prune, index, list(range(0, width, 4))),
            partial(model.plan_add_neurons, index, 2),
        ):
            fast, slow = _plans(model, operation)
            assert _same(fast, slow), (index, fast, slow)
        for edit in (partial(model.prune, index, [0]), partial(model.add_neurons, index, 1, seed=0)):
            with contextlib.suppress(SurgeryError):  # edit, so that later comparisons start from an edited graph
                edit()
    with torch.no_grad():
        assert model(x).shape == (2, 10)


class Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 8)
        self.rnn = torch.nn.LSTM(8, 6, batch_first=True)
        self.stacked = torch.nn.GRU(6, 5, num_layers=2, batch_first=True)  # two layers: stays a plain GRU
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.relu(self.embed(x)))
        z, _ = self.stacked(y)
        return self.head(z[:, -1])


def test_a_recurrent_network_gets_the_graph_after_an_edit_without_a_trace_as_a_trace_would():
    model = convert_to_ops(Recurrent())
    model(torch.randn(2, 5, 4))
    assert [type(layer).__name__ for layer in model.layers] == ["LinearWithNeuronOps", "LSTMWithNeuronOps",
                                                               "LinearWithNeuronOps"]
    graph = model.dependency_graph()
    assert not graph.generic  # the plain GRU reads its width from input_size, an attribute that follows
    assert "model.stacked.input_size" in graph.sizes
    for operation in (partial(model.plan_prune, 1, [2]), partial(model.plan_add_neurons, 1, 2),
                      partial(model.plan_prune, 0, [0, 5])):
        fast, slow = _plans(model, operation)
        assert _same(fast, slow), (fast, slow)
    model.prune(1, [2])  # the LSTM's hidden units: the GRU's input columns follow
    assert model.model.stacked.input_size == 5 and model.model.stacked.weight_ih_l0.shape == (15, 5)
    assert model(torch.randn(2, 5, 4)).shape == (2, 2)


def test_a_reshape_fixed_by_attention_heads_is_refused_naming_the_constant():
    # Conversion version 4 keeps torchvision's window attention, which splits the stream into heads of C // num_heads
    # (version 5 converts it: tests/surgery/test_window_attention.py).
    model = convert_to_ops(torchvision.models.swin_t(num_classes=10), version=4)
    model, _ = _ready(model, side=64)
    stream = model.layers.index(model.model.features[5][1].mlp[3])  # writes the residual stream of stage 3
    with pytest.raises(SurgeryError, match=r"`reshape` in model.features.5.0.attn \(with num_heads=12 of that module\)"):
        model.prune(layer_index=stream, neuron_indices={0})
    hidden = model.layers.index(model.model.features[5][1].mlp[0])
    model.prune(layer_index=hidden, neuron_indices={0, 1})  # the MLP's hidden channels stay editable
    assert model.model.features[5][1].mlp[3].in_features == 4 * 384 - 2


class DenseNet(NetworkWithOps):
    """DenseNet's transition: two layers concatenated, one batch norm over both, then a 1×1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = Conv2dWithNeuronOps(3, 4, 3, padding=1)
        self.b = Conv2dWithNeuronOps(3, 2, 3, padding=1)
        self.norm = BatchNorm2dWithNeuronOps(6)
        self.c = Conv2dWithNeuronOps(6, 5, 1)
        self.head = LinearWithNeuronOps(5, 3)
        self.layers = [self.a, self.b, self.norm, self.c, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(torch.cat([self.a(x), self.b(x)], 1)))
        return self.head(F.relu(self.c(y)).mean((2, 3)))


def test_a_batch_norm_over_a_concatenation_prunes_through_but_asks_where_to_add():
    model, _ = _ready(DenseNet())
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"its 6 channels come from 2 layers concatenated .*add neurons to one of"):
        model.add_neurons(layer_index=2, neuron_count=1)
    assert_same(before, fingerprint(model))
    model.prune(layer_index=2, neuron_indices={4})  # channel 4 of the norm is channel 0 of b
    assert (model.a.out_channels, model.b.out_channels, model.norm.num_features) == (4, 1, 5)
