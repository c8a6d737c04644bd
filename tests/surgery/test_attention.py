"""Attention: nn.MultiheadAttention converted with its projections as ops layers; a ViT's residual stream is
edited across every block (its ``hidden_dim`` follows); the heads are refused, naming num_heads and head_dim."""

from __future__ import annotations

import copy

import pytest
import torch
from surgery_helpers import assert_same, fingerprint, train_step
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from weightslab.errors import SurgeryError
from weightslab.surgery import MultiheadAttentionWithNeuronOps, convert_to_ops


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=24,
                              num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision zero-initialises it: outputs would all be 0
    return model


def _index(net, name: str) -> int:
    names = {layer: n for n, layer in net.named_modules()}
    return next(i for i, layer in enumerate(net.layers) if names[layer] == name)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_converted_attention_computes_what_torch_computes_with_masks_weights_and_unbatched_inputs(batch_first):
    torch.manual_seed(0)
    torch_mha = nn.MultiheadAttention(12, 3, batch_first=batch_first)
    ours = MultiheadAttentionWithNeuronOps(copy.deepcopy(torch_mha))
    shape_q, shape_k = ((2, 5, 12), (2, 7, 12)) if batch_first else ((5, 2, 12), (7, 2, 12))
    q, k = torch.randn(shape_q), torch.randn(shape_k)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0, 3] = True
    calls = [dict(), dict(need_weights=False), dict(attn_mask=torch.randn(5, 7)),
             dict(key_padding_mask=padding, need_weights=False), dict(average_attn_weights=False)]
    for kwargs in calls:
        expected, expected_weights = torch_mha(q, k, k, **kwargs)
        got, weights = ours(q, k, k, **kwargs)
        assert got.shape == expected.shape
        assert _rel(got, expected) < 1e-6, kwargs
        if expected_weights is None:
            assert weights is None
        else:
            assert _rel(weights, expected_weights) < 1e-6, kwargs
    single = q[0] if batch_first else q[:, 0]
    assert _rel(ours(single, single, single)[0], torch_mha(single, single, single)[0]) < 1e-6
    # Self-attention in training mode (one packed projection, the same ops as torch's): bit-exact.
    x = torch.randn(shape_q)
    assert torch.equal(ours.train()(x, x, x, need_weights=False)[0], torch_mha.train()(x, x, x, need_weights=False)[0])


def test_a_vit_converts_exactly_keeping_the_parameter_objects():
    model = _vit()
    params = list(model.parameters())
    x = torch.randn(3, 3, 32, 32)
    expected = model(x)
    net = convert_to_ops(model)
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert torch.equal(net(x), expected)  # grad mode: torch's own (slow) path, computed with the same ops
    attention = net.model.encoder.layers[0].self_attention
    assert isinstance(attention, MultiheadAttentionWithNeuronOps)
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (16, 2, 8)


def test_pruning_a_vits_residual_stream_edits_every_block_and_its_hidden_dim_follows():
    net = convert_to_ops(_vit())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    before = copy.deepcopy(net)
    old_avg = optimizer.state[net.model.encoder.pos_embedding]["exp_avg"].clone()
    out_proj = _index(net, "model.encoder.layers.encoder_layer_1.self_attention.out_proj")
    plan = net.plan_prune(out_proj, [3, 10])
    assert "model.hidden_dim -> 14" in str(plan)
    net.prune(out_proj, [3, 10])
    keep = [c for c in range(16) if c not in (3, 10)]
    model, old = net.model, before.model
    assert model.hidden_dim == 14 and net(x).shape == (4, 5)
    assert torch.equal(model.conv_proj.weight, old.conv_proj.weight[keep])
    assert torch.equal(model.class_token, old.class_token[..., keep])
    assert torch.equal(model.encoder.pos_embedding, old.encoder.pos_embedding[..., keep])
    for block, old_block in zip(model.encoder.layers, old.encoder.layers):
        attention, old_attention = block.self_attention, old_block.self_attention
        assert torch.equal(attention.in_proj.weight, old_attention.in_proj.weight[:, keep])  # every head's input
        assert torch.equal(attention.out_proj.weight, old_attention.out_proj.weight[keep])
        assert attention.embed_dim == 14 and attention.head_dim == 8  # the heads keep their width
        assert block.ln_1.normalized_shape == (14,) and torch.equal(block.ln_1.weight, old_block.ln_1.weight[keep])
        assert torch.equal(block.mlp[0].weight, old_block.mlp[0].weight[:, keep])
    assert torch.equal(model.heads.head.weight, old.heads.head.weight[:, keep])
    # Adam's state went with the channels, step counts kept, and training continues.
    state = optimizer.state[model.encoder.pos_embedding]
    assert torch.equal(state["exp_avg"], old_avg[..., keep]) and int(state["step"]) == 1
    train_step(net, optimizer, x, y)


def test_adding_stream_channels_to_a_vit_changes_its_output_only_through_its_layer_norms():
    net = convert_to_ops(_vit())
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    before = net(x).detach()
    plan = net.plan_add_neurons(0, 2)
    assert any("normalises these channels together" in note for note in plan.notes)
    net.add_neurons(0, 2, seed=1)
    after = net(x).detach()
    assert net.model.hidden_dim == 18 and after.shape == before.shape
    # The new channels enter through zero outgoing weights, but every LayerNorm's mean and variance now count
    # them: the output changes (by 48 % on this 16-wide, untrained model), as the plan's notes say ...
    assert _rel(after, before) > 1e-3
    # ... and only through them: the same ViT without its LayerNorms keeps its function.
    model = _vit()
    for block in model.encoder.layers:
        block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
    model.encoder.ln = nn.Identity()
    net = convert_to_ops(model).eval()
    before = net(x).detach()
    assert not net.plan_add_neurons(0, 2).notes
    net.add_neurons(0, 2, seed=1)
    assert _rel(net(x).detach(), before) < 1e-6


def _residual_attention() -> nn.Module:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 12)
            self.attention = nn.MultiheadAttention(12, 3, batch_first=True)
            self.head = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            h = h + self.attention(h, h, h, need_weights=False)[0]
            return self.head(torch.relu(h)).mean(1)

    torch.manual_seed(0)
    return Block()


def test_adding_to_a_stream_through_attention_without_a_norm_preserves_the_function():
    net = convert_to_ops(_residual_attention())
    x = torch.randn(3, 5, 6)
    before = net(x).detach()
    net.add_neurons(0, 4, seed=0)
    assert net.model.attention.in_proj.weight.shape == (36, 16)
    assert net.model.attention.out_proj.weight.shape == (16, 12)
    assert _rel(net(x).detach(), before) < 1e-6


def test_editing_attention_heads_is_refused_naming_num_heads_and_head_dim_with_nothing_changed():
    net = convert_to_ops(_residual_attention())
    x = torch.randn(3, 5, 6)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    net(x).sum().backward()
    optimizer.step()
    before = fingerprint(net, optimizer)
    in_proj = _index(net, "model.attention.in_proj")
    for edit in (lambda: net.prune(in_proj, [0]), lambda: net.add_neurons(in_proj, 3)):
        with pytest.raises(SurgeryError, match=r"attention heads in model\.attention \(num_heads=3, head_dim=4"):
            edit()
    assert_same(fingerprint(net, optimizer), before)


def test_a_checkpoint_of_an_edited_vit_loads_into_a_fresh_one_with_its_hidden_dim():
    net = convert_to_ops(_vit())
    x = torch.randn(2, 3, 32, 32)
    net(x)
    net.add_neurons(0, 3, seed=0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = convert_to_ops(_vit())
    fresh(x)
    fresh.load_state_resizing(state)
    assert fresh.model.hidden_dim == 19
    assert torch.equal(fresh.eval()(x), net.eval()(x))
