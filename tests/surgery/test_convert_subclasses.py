"""convert_to_ops converts subclasses of the torch layers by isinstance, except what must stay as it is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightslab.errors import SurgeryError
from weightslab.surgery import LinearWithNeuronOps, MultiheadAttentionWithNeuronOps, convert_to_ops
from weightslab.surgery.convert import EXCLUDED


class PlainSubclass(nn.Linear):
    """A subclass that only adds a name: it computes what nn.Linear computes."""


class OwnForward(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = PlainSubclass(4, 6)
        self.own = OwnForward(6, 6)
        self.normed = nn.utils.parametrizations.weight_norm(nn.Linear(6, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.normed(torch.relu(self.own(torch.relu(self.plain(x)))))))


def test_a_plain_subclass_is_converted_and_one_with_its_own_forward_or_computed_weights_is_not():
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(3, 4)
    with torch.no_grad():
        before = model(x)
    net = convert_to_ops(model)
    assert isinstance(model.plain, LinearWithNeuronOps)
    assert type(model.own) is OwnForward and not isinstance(model.normed, LinearWithNeuronOps)
    assert isinstance(model.out, LinearWithNeuronOps) and nn.LazyLinear in EXCLUDED
    with torch.no_grad():
        assert torch.equal(net(x), before)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.block = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


def test_before_version_3_attention_stays_as_it_is_its_feed_forward_block_is_editable_and_refusals_name_it():
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        before = model(x)
    net = convert_to_ops(model, version=2)
    block = model.block
    assert not isinstance(block.self_attn.out_proj, LinearWithNeuronOps)  # listed in EXCLUDED
    with torch.no_grad():
        assert torch.equal(net(x), before)
    net.prune(layer_index=net.layers.index(block.linear1), neuron_indices={0, 3})  # the feed-forward block
    assert block.linear1.out_features == 14 and block.linear2.in_features == 14
    with pytest.raises(SurgeryError, match="`multi_head_attention_forward` in model.block.self_attn"):
        net.prune(layer_index=net.layers.index(model.embed), neuron_indices={0})  # the residual stream


def test_a_transformer_encoder_layers_attention_is_converted_and_its_residual_stream_is_editable():
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        before = model(x)  # torch's inference fast path
    net = convert_to_ops(model)
    block = model.block
    assert isinstance(block.self_attn, MultiheadAttentionWithNeuronOps)
    with torch.no_grad():
        after = net(x)  # the converted attention, called by the layer (its fast path is off)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-6
    net.prune(layer_index=net.layers.index(model.embed), neuron_indices={0})  # the residual stream
    assert block.self_attn.embed_dim == 7 and block.norm1.normalized_shape == (7,)
    assert block.linear1.in_features == 7 and block.linear2.out_features == 7 and model.head.in_features == 7
    assert block.self_attn.head_dim == 4  # the heads keep their width
    assert net(x).shape == (2, 3)
