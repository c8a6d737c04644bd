"""Surgery keeps the optimizer: same object, same Parameters, surviving state bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
from surgery_helpers import OPTIMIZERS, train_step
from surgery_models import ConvBNModel, MNISTModel, mnist_batch, resnet18, small_batch

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def _snapshot(optimizer):
    return {
        id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in optimizer.state[p].items()}
        for g in optimizer.param_groups
        for p in g["params"]
        if p in optimizer.state
    }


def _setup(model_name, optimizer_name):
    torch.manual_seed(0)
    if model_name == "resnet":
        model = resnet18()
        batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    elif model_name == "conv_bn":
        model, batch = ConvBNModel(), small_batch(8)
    else:
        model, batch = MNISTModel(), mnist_batch(8)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    model.attach_optimizer(optimizer)
    for _ in range(3):
        train_step(model, optimizer, *batch)
    return model, optimizer, batch


def _check_invariants(model, optimizer, batch, hyper, optimizer_name):
    # Same hyper-parameters, exactly the live trainable parameters, no stale state.
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == hyper
    live = {id(p) for p in model.parameters() if p.requires_grad}
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == live
    assert all(id(p) in live for p in optimizer.state)
    for p, state in optimizer.state.items():
        for key in STATE_KEYS:
            if state.get(key) is not None:
                assert state[key].shape == p.shape
    # Every trainable parameter moves on the next step.
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, optimizer, *batch)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # The state dict round-trips through a fresh optimizer of the same kind.
    saved = optimizer.state_dict()
    clone = OPTIMIZERS[optimizer_name](model.parameters())
    clone.load_state_dict(saved)
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            other = clone.state[p][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", ["mnist", "conv_bn", "resnet"])
def test_prune_keeps_optimizer_state_of_survivors(model_name, optimizer_name):
    model, optimizer, batch = _setup(model_name, optimizer_name)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    index = {"mnist": 1, "conv_bn": 1, "resnet": 1}[model_name]
    plan = model.plan_prune(layer_index=index, neuron_indices={0, 2})
    by_name = dict(model.named_modules())
    state = _snapshot(optimizer)
    same_object = optimizer
    model.prune(layer_index=index, neuron_indices={0, 2})
    assert model.optimizer is same_object
    checked = 0
    for edit in plan.edits:
        layer = by_name[edit.name]
        for slot in layer.slots():
            param = getattr(layer, slot.name)
            if not isinstance(param, torch.nn.Parameter) or id(param) not in state:
                continue
            for key, old in state[id(param)].items():
                new = optimizer.state[param][key]
                if key == "step":
                    assert torch.equal(new, old)
                    continue
                expected = old
                if edit.row_source is not None and slot.row_dim is not None:
                    expected = expected.index_select(slot.row_dim, torch.as_tensor(edit.row_source))
                if edit.col_source is not None and slot.col_dim is not None:
                    expected = expected.index_select(slot.col_dim, torch.as_tensor(edit.col_source))
                assert torch.equal(new, expected), f"{edit.name}.{slot.name}:{key}"
                checked += 1
    assert checked >= 4
    _check_invariants(model, optimizer, batch, hyper, optimizer_name)


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", ["mnist", "conv_bn", "resnet"])
def test_add_keeps_optimizer_state_and_gives_new_neurons_fresh_state(model_name, optimizer_name):
    model, optimizer, batch = _setup(model_name, optimizer_name)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    layer = model.layers[1]
    width = layer.neuron_count
    state = _snapshot(optimizer)
    model.add_neurons(layer_index=1, neuron_count=3, seed=0)
    for key, old in state[id(layer.weight)].items():
        new = optimizer.state[layer.weight][key]
        if key == "step":
            assert torch.equal(new, old)
        else:
            assert torch.equal(new[:width], old) and not new[width:].any()
    _check_invariants(model, optimizer, batch, hyper, optimizer_name)


def test_new_neurons_take_normal_sized_adam_steps_after_long_training():
    torch.manual_seed(0)
    model = MNISTModel()
    lr = 1e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.attach_optimizer(optimizer)
    x, y = mnist_batch(8)
    for _ in range(1000):
        train_step(model, optimizer, x, y)
    model.add_neurons(layer_index=1, neuron_count=2, seed=0)
    steps = []
    for _ in range(10):
        rows = model.layer1.weight[4:].detach().clone()
        cols = model.layer2.weight[:, 4:].detach().clone()
        train_step(model, optimizer, x, y)
        with torch.no_grad():
            row_step = (model.layer1.weight[4:] - rows).abs().max()
            col_step = (model.layer2.weight[:, 4:] - cols).abs().max()
        steps.append(max(float(row_step), float(col_step)))
    assert max(steps) <= 1.5 * lr
    assert max(steps) > 0.1 * lr  # they do train


def test_adam_correction_of_young_neurons_leaves_the_old_ones_bit_identical():
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.attach_optimizer(optimizer)
    x, y = mnist_batch(8)
    for _ in range(5):
        train_step(model, optimizer, x, y)
    model.add_neurons(layer_index=2, neuron_count=1, seed=0)
    train_step(model, optimizer, x, y)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    train_step(model, optimizer, x, y)
    corrected = model.layer2.weight.detach().clone()
    # The same step without the hooks: only the young row differs.
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_optimizer)
    model.detach_optimizer()
    train_step(model, optimizer, x, y)
    plain = model.layer2.weight.detach()
    assert torch.equal(corrected[:10], plain[:10])
    assert not torch.equal(corrected[10], plain[10])
