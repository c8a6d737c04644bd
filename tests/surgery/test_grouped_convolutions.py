"""Grouped and depthwise convolutions: coupled units, equal-width groups, exact survivors, clear refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from surgery_helpers import assert_same, fingerprint, train_step

from weightslab.errors import SurgeryError
from weightslab.surgery import (
    BatchNorm2dWithNeuronOps,
    Conv2dWithNeuronOps,
    LinearWithNeuronOps,
    NetworkWithOps,
)


class DepthwiseNet(NetworkWithOps):
    """MobileNet's block: stem → BN → ReLU → depthwise 3×3 → BN → ReLU → pointwise 1×1 → pool → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dWithNeuronOps(3, 8, 3, padding=1)
        self.bn0 = BatchNorm2dWithNeuronOps(8)
        self.dw = Conv2dWithNeuronOps(8, 8, 3, padding=1, groups=8)
        self.bn1 = BatchNorm2dWithNeuronOps(8)
        self.pw = Conv2dWithNeuronOps(8, 6, 1)
        self.head = LinearWithNeuronOps(6, 4)
        self.layers = [self.stem, self.dw, self.pw, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_update_age(x)
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.dw(x)))
        return self.head(F.relu(self.pw(x)).mean((2, 3)), skip_register=True)


class GroupedNet(NetworkWithOps):
    """ResNeXt's grouped 3×3: stem (8) → grouped conv (4 groups: 2 inputs, 3 outputs each) → BN → 1×1 → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dWithNeuronOps(3, 8, 3, padding=1)
        self.grouped = Conv2dWithNeuronOps(8, 12, 3, padding=1, groups=4)
        self.bn = BatchNorm2dWithNeuronOps(12)
        self.pw = Conv2dWithNeuronOps(12, 6, 1)
        self.head = LinearWithNeuronOps(6, 4)
        self.layers = [self.stem, self.grouped, self.pw, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_update_age(x)
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.grouped(x)))
        return self.head(F.relu(self.pw(x)).mean((2, 3)), skip_register=True)


def _ready(make, device="cpu", optimizer: bool = False):
    torch.manual_seed(0)
    model = make().to(device)
    x = torch.randn(4, 3, 6, 6, device=device)
    y = torch.randint(0, 4, (4,), device=device)
    model.set_example_input(x)
    opt = None
    if optimizer:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.attach_optimizer(opt)
        train_step(model, opt, x, y)
    model.eval()
    return model, x, y, opt


def _clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def _output(model, x):
    with torch.no_grad():
        return model(x)


# -- depthwise ------------------------------------------------------------------------------------------------


def test_pruning_a_channel_that_feeds_a_depthwise_conv_prunes_its_filter_and_everything_after(device):
    model, x, _, _ = _ready(DepthwiseNet, device)
    stem, dw, pw, bn1 = (_clone(t) for t in (model.stem.weight, model.dw.weight, model.pw.weight, model.bn1.running_mean))
    model.prune(layer_index=0, neuron_indices={2, 5})
    keep = [0, 1, 3, 4, 6, 7]
    assert torch.equal(model.stem.weight, stem[keep])
    assert torch.equal(model.dw.weight, dw[keep]) and torch.equal(model.bn1.running_mean, bn1[keep])
    assert torch.equal(model.pw.weight, pw[:, keep])
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (6, 6, 6)
    assert _output(model, x).shape == (4, 4)


def test_pruning_the_depthwise_conv_prunes_the_channel_it_reads():
    model, x, _, _ = _ready(DepthwiseNet)
    stem = _clone(model.stem.weight)
    model.prune(layer_index=1, neuron_indices={0})
    assert torch.equal(model.stem.weight, stem[1:]) and model.dw.groups == 7


def test_adding_to_a_depthwise_input_adds_depthwise_filters_and_keeps_the_output(device):
    model, x, y, optimizer = _ready(DepthwiseNet, device, optimizer=True)
    before = _output(model, x)
    dw = _clone(model.dw.weight)
    model.add_neurons(layer_index=0, neuron_count=3, seed=1)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (11, 11, 11)
    assert torch.equal(model.dw.weight[:8], dw) and model.dw.weight[8:].abs().sum() > 0  # new filters are drawn
    assert not model.pw.weight[:, 8:].any()  # zero outgoing weights: the output does not change
    assert torch.allclose(_output(model, x), before, rtol=0, atol=1e-6)
    assert not optimizer.state[model.dw.weight]["exp_avg"][8:].any()
    model.train()
    train_step(model, optimizer, x, y)
    assert model.pw.weight.grad[:, 8:].abs().sum() > 0  # the new channels learn


def test_adam_moments_of_surviving_depthwise_filters_are_kept_bit_exactly():
    model, x, y, optimizer = _ready(DepthwiseNet, optimizer=True)
    moments = _clone(optimizer.state[model.dw.weight]["exp_avg_sq"])
    model.prune(layer_index=0, neuron_indices={4})
    assert torch.equal(optimizer.state[model.dw.weight]["exp_avg_sq"], moments[[0, 1, 2, 3, 5, 6, 7]])
    model.train()
    train_step(model, optimizer, x, y)


# -- groups of equal width ------------------------------------------------------------------------------------


def test_pruning_one_channel_per_group_keeps_each_groups_own_columns():
    model, x, _, _ = _ready(GroupedNet)
    weight = _clone(model.grouped.weight)  # [12, 2, 3, 3]: rows 0-2 read stem 0-1, rows 3-5 read stem 2-3, ...
    model.prune(layer_index=0, neuron_indices={0, 3, 4, 7})  # local channel 0, 1, 0, 1 of groups 0..3
    assert (model.grouped.in_channels, model.grouped.groups, model.grouped.weight.shape[1]) == (4, 4, 1)
    survivor = torch.tensor([1, 0, 1, 0]).repeat_interleave(3)
    assert torch.equal(model.grouped.weight[:, 0], weight[torch.arange(12), survivor])
    assert _output(model, x).shape == (4, 4)


def test_an_uneven_prune_of_a_grouped_input_is_refused_with_the_widths_that_are_possible():
    model, x, _, _ = _ready(GroupedNet)
    before = fingerprint(model)
    with pytest.raises(SurgeryError) as raised:
        model.prune(layer_index=0, neuron_indices={0})
    message = str(raised.value)
    assert "grouped convolution (groups=4)" in message and "4 groups of 2" in message
    assert "removes 1 from group 0 and 0 from groups 1, 2, 3" in message
    assert "e.g. {0, 2, 4, 6}" in message and "whole groups of 2 (e.g. {0, 1})" in message
    assert_same(before, fingerprint(model))


def test_pruning_all_inputs_of_a_group_removes_the_whole_group():
    model, x, _, _ = _ready(GroupedNet)
    weight, pw = _clone(model.grouped.weight), _clone(model.pw.weight)
    model.prune(layer_index=0, neuron_indices={2, 3})
    assert (model.grouped.groups, model.grouped.out_channels, model.bn.num_features) == (3, 9, 9)
    kept_rows = [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert torch.equal(model.grouped.weight, weight[kept_rows]) and torch.equal(model.pw.weight, pw[:, kept_rows])


def test_pruning_all_outputs_of_a_group_removes_the_inputs_it_read():
    model, x, _, _ = _ready(GroupedNet)
    stem = _clone(model.stem.weight)
    model.prune(layer_index=1, neuron_indices={9, 10, 11})
    assert torch.equal(model.stem.weight, stem[:6]) and model.grouped.groups == 3


def test_adding_to_a_grouped_input_puts_one_new_channel_at_the_end_of_every_group():
    model, x, _, _ = _ready(GroupedNet)
    before = _output(model, x)
    stem, weight = _clone(model.stem.weight), _clone(model.grouped.weight)
    model.add_neurons(layer_index=0, neuron_count=4, seed=3)
    old_rows = [0, 1, 3, 4, 6, 7, 9, 10]
    assert torch.equal(model.stem.weight[old_rows], stem)
    assert model.grouped.weight.shape == (12, 3, 3, 3) and model.grouped.groups == 4
    assert torch.equal(model.grouped.weight[:, :2], weight) and not model.grouped.weight[:, 2].any()
    assert torch.allclose(_output(model, x), before, rtol=0, atol=1e-6)


def test_adding_to_a_grouped_conv_adds_rows_to_every_group():
    model, x, _, _ = _ready(GroupedNet)
    before = _output(model, x)
    weight = _clone(model.grouped.weight)
    model.add_neurons(layer_index=1, neuron_count=4, seed=3)
    new_rows = [3, 7, 11, 15]
    old_rows = [r for r in range(16) if r not in new_rows]
    assert torch.equal(model.grouped.weight[old_rows], weight)
    assert model.bn.num_features == 16 and not model.pw.weight[:, new_rows].any()
    assert torch.allclose(_output(model, x), before, rtol=0, atol=1e-6)


def test_per_incoming_neuron_learning_rate_of_a_grouped_conv_reaches_the_right_columns():
    model, x, y, optimizer = _ready(GroupedNet, optimizer=True)
    model.set_per_incoming_neuron_learning_rate(1, {3}, lr=0.0)  # input channel 3: column 1 of group 1's rows
    weight = _clone(model.grouped.weight)
    model.train()
    train_step(model, optimizer, x, y)
    assert torch.equal(model.grouped.weight[3:6, 1], weight[3:6, 1])
    assert not torch.equal(model.grouped.weight[3:6, 0], weight[3:6, 0])
    assert not torch.equal(model.grouped.weight[0:3, 1], weight[0:3, 1])


def test_a_checkpoint_of_a_pruned_grouped_model_loads_into_a_fresh_one():
    model, x, _, _ = _ready(GroupedNet)
    model.prune(layer_index=0, neuron_indices={2, 3})
    model.add_neurons(layer_index=1, neuron_count=3, seed=0)
    fresh = GroupedNet()
    fresh.set_example_input(x)
    fresh.load_state_resizing(model.state_dict())
    fresh.eval()
    assert (fresh.grouped.groups, fresh.grouped.in_channels, fresh.grouped.out_channels) == (3, 6, 12)
    assert torch.equal(_output(fresh, x), _output(model, x))


REFUSALS = {
    # name: (operation, words the message must contain)
    "one channel of a grouped input": (lambda m: m.prune(0, {1}), "every group must keep the same width"),
    "uneven rows of a grouped conv": (lambda m: m.prune(1, {0, 1, 3}), "removes 2 from group 0"),
    "an add that does not divide among groups": (lambda m: m.add_neurons(0, 2), "add a multiple of 4"),
    "an add to a grouped conv that does not divide": (lambda m: m.add_neurons(1, 5), "add a multiple of 4"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_grouped_edit_changes_nothing_and_records_nothing(case):
    model, x, _, optimizer = _ready(GroupedNet, optimizer=True)
    operation, words = REFUSALS[case]
    log: list = []
    model.add_observer(log.append)
    before = fingerprint(model, optimizer)
    with pytest.raises(SurgeryError, match=words):
        operation(model)
    assert_same(before, fingerprint(model, optimizer))
    assert log == [] and model.grouped.groups == 4
