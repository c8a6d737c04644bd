"""Tensors laid out along channels outside the ops layers follow an edit: normalisation layers' entries,
layer scales, position embeddings and class tokens.

LayerNorm and GroupNorm normalise channels together: an add changes the other channels'
outputs (their statistics now include the new channel), which the plan says; the size of
that change is measured below and in ``docs/zoo.md``. BatchNorm1d normalises each channel
on its own: an add through it is function-preserving.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from surgery_helpers import assert_same, fingerprint, train_step
from torch import nn

from weightslab.errors import SurgeryError
from weightslab.surgery import Conv2dWithNeuronOps, LinearWithNeuronOps, NetworkWithOps


class NextBlockNet(NetworkWithOps):
    """ConvNeXt in small: stem → channels-last LayerNorm → depthwise 7×7 → LayerNorm → MLP → layer scale → + → head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dWithNeuronOps(3, 8, 2, stride=2)
        self.norm0 = nn.LayerNorm(8)
        self.dw = Conv2dWithNeuronOps(8, 8, 7, padding=3, groups=8)
        self.norm1 = nn.LayerNorm(8)
        self.fc1 = LinearWithNeuronOps(8, 16)
        self.fc2 = LinearWithNeuronOps(16, 8)
        self.gamma = nn.Parameter(torch.full((8, 1, 1), 0.5))
        self.norm2 = nn.LayerNorm(8)
        self.head = LinearWithNeuronOps(8, 4)
        self.layers = [self.stem, self.dw, self.fc1, self.fc2, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm0(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.norm1(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        x = x + self.gamma * y
        return self.head(self.norm2(x.mean((2, 3))))


class TokenNet(NetworkWithOps):
    """ViT's embedding in small: patches → tokens, a class token, a position embedding, an MLP block, no norm."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = Conv2dWithNeuronOps(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.fc1 = LinearWithNeuronOps(8, 16)
        self.fc2 = LinearWithNeuronOps(16, 8)
        self.head = LinearWithNeuronOps(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # [N, 4 tokens, 8]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


class NormsNet(NetworkWithOps):
    """conv → GroupNorm(4 groups) → conv → pool → Linear → BatchNorm1d → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2dWithNeuronOps(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.conv2 = Conv2dWithNeuronOps(8, 6, 1)
        self.fc = LinearWithNeuronOps(6, 10)
        self.bn = nn.BatchNorm1d(10)
        self.head = LinearWithNeuronOps(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.gn(self.conv(x))))).mean((2, 3))
        return self.head(F.relu(self.bn(self.fc(x))))


def _ready(make, side: int = 8):
    torch.manual_seed(0)
    model = make()
    model.eval()
    x = torch.randn(4, 3, side, side)
    with torch.no_grad():
        model(x)
    return model, x


def _out(model, x):
    with torch.no_grad():
        return model(x)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_a_prune_removes_the_layer_norm_entries_and_layer_scale_of_the_channel():
    model, x = _ready(NextBlockNet)
    saved = {n: t.detach().clone() for n, t in model.named_parameters()}
    model.prune(layer_index=0, neuron_indices={3})
    keep = [0, 1, 2, 4, 5, 6, 7]
    for norm in ("norm0", "norm1", "norm2"):
        assert torch.equal(getattr(model, norm).weight, saved[f"{norm}.weight"][keep])
        assert getattr(model, norm).normalized_shape == (7,)
    assert torch.equal(model.gamma, saved["gamma"][keep])
    assert torch.equal(model.fc1.weight, saved["fc1.weight"][:, keep])
    assert torch.equal(model.fc2.weight, saved["fc2.weight"][keep])
    assert torch.equal(model.dw.weight, saved["dw.weight"][keep]) and model.dw.groups == 7
    assert _out(model, x).shape == (4, 4)


def test_an_add_through_layer_norms_is_noted_and_changes_the_others_by_a_measured_amount():
    model, x = _ready(NextBlockNet)
    before = _out(model, x)
    plan = model.plan_add_neurons(layer_index=0, neuron_count=2)
    assert any("norm0 normalises these channels together" in note for note in plan.notes)
    model.add_neurons(layer_index=0, neuron_count=2, seed=0)
    assert model.norm1.normalized_shape == (10,)
    assert model.norm1.weight[8:].tolist() == [1.0, 1.0] and model.norm1.bias[8:].tolist() == [0.0, 0.0]
    assert model.gamma[8:].flatten().tolist() == [1.0, 1.0]
    change = _relative(_out(model, x), before)
    assert 0 < change < 1  # the statistics over 10 channels instead of 8: see docs/zoo.md for the sizes


def test_an_add_to_hidden_channels_no_norm_reads_keeps_the_output():
    model, x = _ready(NextBlockNet)
    before = _out(model, x)
    plan = model.plan_add_neurons(layer_index=2, neuron_count=3)
    assert plan.notes == ()
    model.add_neurons(layer_index=2, neuron_count=3, seed=0)
    assert _relative(_out(model, x), before) <= 1e-6


def test_a_class_token_and_position_embedding_follow_the_stream_and_an_add_keeps_the_output():
    model, x = _ready(TokenNet)
    cls, pos = model.cls.detach().clone(), model.pos.detach().clone()
    before = _out(model, x)
    model.add_neurons(layer_index=0, neuron_count=2, seed=0)
    assert model.cls.shape == (1, 1, 10) and model.pos.shape == (1, 5, 10)
    assert torch.equal(model.cls[..., :8], cls) and not model.cls[..., 8:].any()
    assert torch.equal(model.pos[..., :8], pos) and not model.pos[..., 8:].any()
    assert _relative(_out(model, x), before) <= 1e-6
    model.prune(layer_index=0, neuron_indices={1, 8})
    assert torch.equal(model.pos[..., :7], pos[..., [0, 2, 3, 4, 5, 6, 7]])
    assert _out(model, x).shape == (4, 3)


def test_a_parameter_that_follows_channels_keeps_its_adam_moments():
    model, x = _ready(TokenNet)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    train_step(model, optimizer, x, torch.tensor([0, 1, 2, 0]))
    moments = optimizer.state[model.pos]["exp_avg"].clone()
    model.prune(layer_index=0, neuron_indices={2})
    assert torch.equal(optimizer.state[model.pos]["exp_avg"], moments[..., [0, 1, 3, 4, 5, 6, 7]])
    train_step(model, optimizer, x, torch.tensor([0, 1, 2, 0]))


def test_group_norm_groups_stay_equal_and_batch_norm_1d_follows_its_channels():
    model, x = _ready(NormsNet)
    gn = model.gn.weight.detach().clone()
    model.prune(layer_index=0, neuron_indices={0, 3, 4, 7})  # one channel from each of the 4 groups
    assert model.gn.num_channels == 4 and model.gn.num_groups == 4
    assert torch.equal(model.gn.weight, gn[[1, 2, 5, 6]])
    mean = model.bn.running_mean.clone()
    model.prune(layer_index=2, neuron_indices={5})
    assert model.bn.num_features == 9 and torch.equal(model.bn.running_mean, mean[[0, 1, 2, 3, 4, 6, 7, 8, 9]])
    before = _out(model, x)
    model.add_neurons(layer_index=2, neuron_count=2, seed=0)  # batch norm 1d: one channel at a time
    assert _relative(_out(model, x), before) <= 1e-6
    plan = model.plan_add_neurons(layer_index=0, neuron_count=4)
    assert any("normalises these channels together" in note for note in plan.notes)
    model.add_neurons(layer_index=0, neuron_count=4, seed=0)
    assert model.gn.num_channels == 8 and model.gn.weight[[1, 3, 5, 7]].tolist() == [1.0] * 4


def test_an_uneven_prune_of_group_norm_channels_is_refused_and_changes_nothing():
    model, x = _ready(NormsNet)
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"normalises them in 4 groups of 2 channels \(group_norm\)"):
        model.prune(layer_index=0, neuron_indices={0})
    with pytest.raises(SurgeryError, match="the same width"):
        model.prune(layer_index=0, neuron_indices={0, 1})  # a whole group: its num_groups would change
    with pytest.raises(SurgeryError, match="add a multiple of 4"):
        model.add_neurons(layer_index=0, neuron_count=2)
    assert_same(before, fingerprint(model))
    assert model.gn.num_channels == 8


def test_a_checkpoint_of_an_edited_model_with_followers_loads_into_a_fresh_one():
    model, x = _ready(NextBlockNet)
    model.prune(layer_index=0, neuron_indices={1, 2})
    model.add_neurons(layer_index=2, neuron_count=3, seed=0)
    fresh = NextBlockNet()
    fresh.eval()
    fresh.load_state_resizing(model.state_dict())
    assert fresh.norm1.normalized_shape == (6,) and fresh.gamma.shape == (6, 1, 1)
    assert torch.equal(_out(fresh, x), _out(model, x))
