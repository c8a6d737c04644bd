"""Window attention (Swin, Swin v2, MaxViT) converted with the heads' width read from its projections: exact
conversion with the same keys and layers as version 4, the residual stream edited across every block and patch
merging, adds exact without LayerNorms, whole heads pruned and added (with their position-bias entries and head
count), parts of heads refused, checkpoints of edited models loading into fresh ones, and converting back to
version 4."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from surgery_helpers import assert_same, fingerprint, train_step
from torch import nn
from torchvision.models import swin_transformer as swin
from torchvision.models.maxvit import MaxVit, RelativePositionalMultiHeadAttention

from weightslab.errors import ConfigurationError, SurgeryError
from weightslab.surgery import convert_to_ops
from weightslab.surgery.convert import conversion_version, use_conversion
from weightslab.surgery.window_attention import RelativeAttentionWithNeuronOps, WindowAttentionWithNeuronOps


def _swin(v2: bool = False, norms: bool = True) -> nn.Module:
    torch.manual_seed(0)
    extra: dict = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if v2 else {}
    if not norms:
        extra["norm_layer"] = lambda width: nn.Identity()
    model = swin.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 4], window_size=[4, 4],
                                 stochastic_depth_prob=0.0, num_classes=5, **extra)
    nn.init.normal_(model.head.weight, std=0.1)  # torchvision zero-initialises the biases: keep outputs informative
    return model


def _maxvit() -> nn.Module:
    torch.manual_seed(0)
    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1],
                  head_dim=8, stochastic_depth_prob=0.0, num_classes=5)


MODELS = {"swin": (_swin, 32), "swin_v2": (partial(_swin, v2=True), 32), "maxvit": (_maxvit, 32)}


def _index(net, name: str) -> int:
    names = {layer: n for n, layer in net.named_modules()}
    return next(i for i, layer in enumerate(net.layers) if names[layer] == name)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_window_attention_converts_exactly_with_the_keys_layers_and_parameters_of_version_4(kind):
    build, size = MODELS[kind]
    plain, x = build(), torch.randn(2, 3, size, size)
    net = convert_to_ops(copy.deepcopy(plain))
    old = convert_to_ops(copy.deepcopy(plain), version=4)
    converted = [m for m in net.modules() if isinstance(m, WindowAttentionWithNeuronOps | RelativeAttentionWithNeuronOps)]
    assert converted and conversion_version(net) == 5
    assert list(net.state_dict()) == list(old.state_dict())
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in old.named_parameters()]
    names = {m: n for n, m in net.named_modules()}
    old_names = {m: n for n, m in old.named_modules()}
    assert [names[layer] for layer in net.layers] == [old_names[layer] for layer in old.layers]
    for train in (True, False):  # the same ops in the same order: bit-identical, and so are the gradients
        plain.train(train), net.train(train)
        assert torch.equal(net(x), plain(x))
    net(x).square().sum().backward()
    plain(x).square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), plain.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name


def test_pruning_a_swin_stream_edits_every_block_and_patch_merging_and_the_heads_keep_their_width():
    net = convert_to_ops(_swin())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    before = copy.deepcopy(net)
    old_avg = optimizer.state[net.model.features[1][0].attn.qkv.weight]["exp_avg"].clone()
    net.prune(_index(net, "model.features.1.1.mlp.3"), [3, 10])  # the stage-1 stream: 16 channels
    keep = [c for c in range(16) if c not in (3, 10)]
    model, old = net.model, before.model
    assert torch.equal(model.features[0][0].weight, old.features[0][0].weight[keep])
    assert model.features[0][2].normalized_shape == (14,)
    for block, old_block in zip(model.features[1], old.features[1]):
        attn, old_attn = block.attn, old_block.attn
        assert torch.equal(attn.qkv.weight, old_attn.qkv.weight[:, keep])  # every head reads the stream
        assert torch.equal(attn.proj.weight, old_attn.proj.weight[keep])
        assert torch.equal(attn.proj.bias, old_attn.proj.bias[keep])
        assert (attn.num_heads, attn.head_dim) == (2, 8)  # the heads keep their number and width
        assert torch.equal(attn.relative_position_bias_table, old_attn.relative_position_bias_table)
        assert torch.equal(block.norm1.weight, old_block.norm1.weight[keep])
        assert torch.equal(block.mlp[3].weight, old_block.mlp[3].weight[keep])
    # Patch merging concatenates 4 shifted copies of the stream: its norm and reduction lose 4 × 2 entries.
    merge, old_merge = model.features[2], old.features[2]
    four = [c + 16 * i for i in range(4) for c in keep]
    assert merge.norm.normalized_shape == (56,) and torch.equal(merge.norm.weight, old_merge.norm.weight[four])
    assert torch.equal(merge.reduction.weight, old_merge.reduction.weight[:, four])
    state = optimizer.state[model.features[1][0].attn.qkv.weight]
    assert torch.equal(state["exp_avg"], old_avg[:, keep]) and int(state["step"]) == 1
    assert net(x).shape == (4, 5)
    train_step(net, optimizer, x, y)


@pytest.mark.parametrize("kind", ["swin", "swin_v2"])
def test_adding_to_a_swin_stream_preserves_the_function_but_for_its_layer_norms(kind):
    x = torch.randn(3, 3, 32, 32)
    net = convert_to_ops(_swin(v2=kind == "swin_v2", norms=False)).eval()
    before = net(x).detach()
    stage2 = _index(net, "model.features.3.0.mlp.3")
    assert not net.plan_add_neurons(stage2, 3).notes
    net.add_neurons(stage2, 3, seed=0)
    net.add_neurons(0, 2, seed=0)
    attn = net.model.features[3][0].attn
    assert attn.qkv.weight.shape == (96, 35) and attn.proj.weight.shape == (35, 32) and attn.head_dim == 8
    assert _rel(net(x).detach(), before) < 1e-6
    # With LayerNorms, the new channels count in their statistics: the plan says so.
    net = convert_to_ops(_swin(v2=kind == "swin_v2")).eval()
    net(x)
    assert any("normalises these channels together" in n for n in net.plan_add_neurons(0, 2).notes)


def test_a_maxvit_stream_is_edited_through_its_attention_and_an_add_keeps_the_function_but_for_norms():
    net = convert_to_ops(_maxvit())
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    layer = net.model.blocks[0].layers[0].layers.window_attention.attn_layer[1]
    assert isinstance(layer, RelativeAttentionWithNeuronOps) and (layer.n_heads, layer.head_dim) == (2, 8)
    merge = _index(net, "model.blocks.0.layers.0.layers.grid_attention.mlp_layer.3")
    net.prune(merge, [1, 5])
    assert layer.to_qkv.weight.shape == (48, 14) and layer.merge.weight.shape == (14, 16) and layer.head_dim == 8
    net.add_neurons(merge, 3, seed=0)
    assert layer.to_qkv.weight.shape == (48, 17) and layer.merge.weight.shape == (17, 16)
    assert net(x).shape == (2, 5)
    train_step(net, optimizer, x, y)


def _attention(net, kind: str):
    model = net.model
    return model.blocks[0].layers[0].layers.window_attention.attn_layer[1] if kind == "maxvit" else model.features[1][0].attn


def _heads(attention) -> int:
    return attention.n_heads if isinstance(attention, RelativeAttentionWithNeuronOps) else attention.num_heads


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_part_of_a_head_is_refused_naming_num_heads_and_head_dim_with_nothing_changed(kind):
    build, size = MODELS[kind]
    net = convert_to_ops(build())
    x = torch.randn(2, 3, size, size)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    net(x).sum().backward()
    optimizer.step()
    before = fingerprint(net, optimizer)
    attention = _attention(net, kind)
    qkv = net.layer_index_of(attention.to_qkv if kind == "maxvit" else attention.qkv)
    with pytest.raises(SurgeryError, match=r"head 0 of the attention heads in .* \(num_heads=2, head_dim=8 of that "
                                           r"module\).*prune whole heads.*\(head 0: rows 0-7, 16-23, 32-39\)"):
        net.prune(qkv, [0, 16, 32])  # the first query, key and value dimension of head 0
    with pytest.raises(SurgeryError, match=r"add whole heads of 24 rows: add a multiple of 24"):
        net.add_neurons(qkv, 3)
    assert_same(fingerprint(net, optimizer), before)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_whole_head_is_pruned_with_its_bias_and_added_back_without_changing_the_output(kind):
    build, size = MODELS[kind]
    net = convert_to_ops(build())
    x, y = torch.randn(2, 3, size, size), torch.randint(0, 5, (2,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    attention = _attention(net, kind)
    qkv, proj = (attention.to_qkv, attention.merge) if kind == "maxvit" else (attention.qkv, attention.proj)
    old = copy.deepcopy(attention)
    old_avg = optimizer.state[qkv.weight]["exp_avg"].clone()
    net.prune(net.layer_index_of(qkv), [r + 16 * b for b in range(3) for r in range(8, 16)])  # head 1
    kept = [r + 16 * b for b in range(3) for r in range(8)]
    assert _heads(attention) == 1 and attention.head_dim == 8
    assert torch.equal(qkv.weight, old_qkv(old, kind).weight[kept])
    assert torch.equal(optimizer.state[qkv.weight]["exp_avg"], old_avg[kept])
    assert torch.equal(proj.weight, old_proj(old, kind).weight[:, :8])  # the values' columns of head 0
    if kind == "swin_v2":
        assert torch.equal(attention.logit_scale, old.logit_scale[:1])
        assert torch.equal(attention.cpb_mlp[2].weight, old.cpb_mlp[2].weight[:1])  # its bias row went with it
    else:
        assert torch.equal(attention.relative_position_bias_table, old.relative_position_bias_table[:, :1])
    train_step(net, optimizer, x, y)
    net.eval()
    before = net(x).detach()
    net.add_neurons(net.layer_index_of(qkv), 24, seed=0)  # one head
    assert _heads(attention) == 2 and qkv.weight.shape[0] == 48 and proj.weight.shape[1] == 16
    assert not proj.weight[:, 8:].any()  # the new head's values enter through zero columns
    assert _rel(net(x).detach(), before) < 1e-6
    assert int(optimizer.state[qkv.weight]["step"]) == 2
    train_step(net, optimizer, x, y)


def old_qkv(old, kind):
    return old.to_qkv if kind == "maxvit" else old.qkv


def old_proj(old, kind):
    return old.merge if kind == "maxvit" else old.proj


def test_swin_v2_heads_follow_their_position_bias_rows_and_a_checkpoint_restores_the_head_count():
    net = convert_to_ops(_swin(v2=True))
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    before = net(x).detach()
    attention = net.model.features[3][0].attn  # 4 heads of 8
    bias = net.layer_index_of(attention.cpb_mlp[2])
    net.add_neurons(bias, 2, seed=0)  # two heads
    assert attention.num_heads == 6 and attention.qkv.weight.shape == (144, 32) and attention.proj.in_features == 48
    assert torch.equal(attention.logit_scale[4:].flatten(), torch.full((2,), math.log(10.0)))
    assert _rel(net(x).detach(), before) < 1e-6
    net.prune(bias, [0, 5])  # heads 0 and 5, whole
    assert attention.num_heads == 4 and attention.qkv.weight.shape == (96, 32)
    with pytest.raises(SurgeryError, match="every head"):
        net.prune(bias, [0, 1, 2, 3])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = convert_to_ops(_swin(v2=True))
    fresh(x)
    fresh.load_state_resizing(state)
    assert fresh.model.features[3][0].attn.num_heads == 4
    assert torch.equal(fresh.eval()(x), net(x))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_checkpoint_of_an_edited_window_attention_model_loads_into_a_fresh_one(kind):
    build, size = MODELS[kind]
    x = torch.randn(2, 3, size, size)
    net = convert_to_ops(build())
    net(x)
    net.add_neurons(0, 3, seed=0)
    net.prune(0, [1])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = convert_to_ops(build())
    fresh(x)
    fresh.load_state_resizing(state)
    assert [layer.neuron_count for layer in fresh.layers] == [layer.neuron_count for layer in net.layers]
    assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_converting_back_to_version_4_restores_the_torchvision_modules_unless_edited():
    net = convert_to_ops(_swin(v2=True))
    x = torch.randn(2, 3, 32, 32)
    params = [id(p) for p in net.parameters()]
    layers = list(net.layers)
    expected = net(x)
    assert use_conversion(net, 4)
    attn = net.model.features[1][0].attn
    assert type(attn) is swin.ShiftedWindowAttentionV2 and attn.qkv is layers[1]  # its projections stay converted
    assert [id(p) for p in net.parameters()] == params and list(net.layers) == layers
    assert torch.equal(net(x), expected)
    edited = convert_to_ops(_swin())
    edited(x)
    edited.prune(0, [0])
    with pytest.raises(ConfigurationError, match="it was edited after convert_to_ops"):
        use_conversion(edited, 4)
    assert isinstance(convert_to_ops(_maxvit(), version=4).model.blocks[0].layers[0].layers.window_attention
                      .attn_layer[1], RelativePositionalMultiHeadAttention)
