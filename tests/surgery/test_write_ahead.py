"""Write-ahead edits: an operation is kept only once its observers recorded it.

When an observer raises (the Experiment could not write the event), everything the
operation changed is put back (the same Parameter, data, buffer and optimizer-state
objects, gradients, widths, settings, caches and traced graph), the observer's own
exception comes out, and the model edits and trains as if nothing had happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from surgery_helpers import assert_same, fingerprint, train_step
from surgery_models import ConvBNModel, resnet18, small_batch

from weightslab.surgery import NetworkWithOps, TrackingMode
from weightslab.surgery.modules import NeuronLayer


class StoreDown(RuntimeError):
    """What a failing observer raises (not a WeightsLabError: it must come out as it is)."""


def _trained(make: Callable[[], NetworkWithOps] = ConvBNModel) -> tuple[NetworkWithOps, torch.optim.Optimizer]:
    """A model mid-training: Adam state, young rows, a non-unit multiplier, a frozen layer, live gradients."""
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    model.tracking_mode = TrackingMode.TRAIN
    x, y = _batch(model)
    train_step(model, optimizer, x, y)
    model.add_neurons(layer_index=1, neuron_count=1, seed=1)
    model.set_per_neuron_learning_rate(1, {0}, lr=0.5)
    model.freeze_layers_up_to_idx(0)
    train_step(model, optimizer, x, y)
    return model, optimizer


def _batch(model: NetworkWithOps) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model, ConvBNModel):
        return small_batch(8)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=generator), torch.randint(0, 10, (2,), generator=generator)


def _snapshot(model: NetworkWithOps, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Values and identities: what a rolled-back operation must leave exactly as it was."""
    params = list(model.parameters())
    ops_layers = [m for m in model.modules() if isinstance(m, NeuronLayer)]
    state = fingerprint(model, optimizer)
    state["data"] = [p.data_ptr() for p in params]
    state["grad_ids"] = [id(p.grad) for p in params]
    state["buffer_ids"] = [id(b) for b in model.buffers()]
    state["optimizer_entries"] = [(id(p), k, id(v)) for p in params for k, v in optimizer.state.get(p, {}).items()]
    state["frozen"] = [m.is_frozen for m in ops_layers]
    state["multipliers"] = [
        [m.step_multiplier(role, getattr(m, role)) for role in m.step_roles() if getattr(m, role) is not None]
        for m in ops_layers
    ]
    return state


OPERATIONS: dict[str, Callable[[NetworkWithOps], None]] = {
    "add_neurons": lambda m: m.add_neurons(layer_index=1, neuron_count=2, seed=3),
    "prune": lambda m: m.prune(layer_index=1, neuron_indices={0, 3}),
    "reinit_neurons": lambda m: m.reinit_neurons(layer_index=2, neuron_indices={1, 2}, seed=4),
    "reinit_neurons/perturbation": lambda m: m.reinit_neurons(
        layer_index=1, neuron_indices={0}, perturbation_ratio=0.3, seed=5
    ),
    "set_neuron_lr": lambda m: m.set_per_neuron_learning_rate(2, {0, 5}, lr=0.0),
    "set_neuron_lr/on-the-layer": lambda m: m.layers[1].set_per_neuron_learning_rate({1}, lr=0.25),
    "set_incoming_neuron_lr": lambda m: m.set_per_incoming_neuron_learning_rate(3, {2}, lr=2.0),
    "set_incoming_neuron_lr/on-the-layer": lambda m: m.layers[2].set_per_incoming_neuron_learning_rate({7}, lr=0.0),
    "freeze": lambda m: m.freeze_layers_up_to_idx(1),
    "unfreeze": lambda m: m.unfreeze_layers_from_idx(0),
}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_an_observer_that_raises_rolls_the_operation_back_exactly(name):
    model, optimizer = _trained()
    operation = OPERATIONS[name]
    graph = model.dependency_graph()
    before = _snapshot(model, optimizer)
    refusal = StoreDown("the store is down")

    def refuse(record: Any) -> None:
        raise refusal

    model.add_observer(refuse)
    with pytest.raises(StoreDown) as raised:
        operation(model)
    assert raised.value is refusal  # the observer's own exception, not wrapped in a SurgeryError
    assert_same(before, _snapshot(model, optimizer))
    assert model.dependency_graph() is graph

    # The next operation works, exactly as on a model that never saw the refusal.
    model.remove_observer(refuse)
    log: list[Any] = []
    model.add_observer(log.append)
    twin, twin_optimizer = _trained()
    operation(model)
    operation(twin)
    assert len(log) == 1
    x, y = small_batch(8, seed=1)
    train_step(model, optimizer, x, y)
    train_step(twin, twin_optimizer, x, y)
    assert_same(fingerprint(twin, twin_optimizer)["state"], fingerprint(model, optimizer)["state"])
    assert_same(twin_optimizer.state_dict(), optimizer.state_dict())


def test_a_refused_prune_of_a_residual_stream_restores_every_coupled_layer():
    model, optimizer = _trained(resnet18)
    before = _snapshot(model, optimizer)

    def refuse(record: Any) -> None:
        raise StoreDown("no room left on the device")

    model.add_observer(refuse)
    with pytest.raises(StoreDown):
        model.prune(layer_index=0, neuron_indices={0, 5})  # the stem, coupled with every residual add of stage 1
    assert_same(before, _snapshot(model, optimizer))
    assert model.model.layer1[0].conv2.out_channels == 65  # 64, and the neuron _trained added
    model.remove_observer(refuse)
    model.prune(layer_index=0, neuron_indices={0, 5})
    assert model.model.layer1[0].conv2.out_channels == 63


def test_observers_notified_before_the_one_that_raises_heard_of_the_operation():
    model, optimizer = _trained()
    heard: list[Any] = []

    def refuse(record: Any) -> None:
        raise StoreDown("second observer down")

    model.add_observer(heard.append)
    model.add_observer(refuse)
    before = _snapshot(model, optimizer)
    with pytest.raises(StoreDown):
        model.prune(layer_index=2, neuron_indices={0})
    assert [r.kind for r in heard] == ["prune"]  # documented: the model is rolled back all the same
    assert_same(before, _snapshot(model, optimizer))


def _attributes(model: NetworkWithOps) -> list[tuple[str, object]]:
    """The integer attributes an edit may change besides tensors: widths, groups, normalised shapes."""
    found = []
    for name, module in model.named_modules():
        for attr in ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                     "normalized_shape", "num_channels", "num_groups", "hidden_dim", "input_size", "hidden_size",
                     "embed_dim"):
            if hasattr(module, attr):
                found.append((f"{name}.{attr}", getattr(module, attr)))
    return found


@pytest.mark.parametrize("edit", ["prune depthwise input", "add through layer norms", "prune one per group"])
def test_a_refused_edit_of_groups_and_followers_puts_every_attribute_back(edit):
    from test_followers import NextBlockNet
    from test_grouped_convolutions import GroupedNet

    torch.manual_seed(0)
    model = GroupedNet() if edit == "prune one per group" else NextBlockNet()
    x = torch.randn(4, 3, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    train_step(model, optimizer, x, torch.tensor([0, 1, 2, 3]))
    operation = {
        "prune depthwise input": lambda: model.prune(layer_index=0, neuron_indices={1, 6}),
        "add through layer norms": lambda: model.add_neurons(layer_index=0, neuron_count=2, seed=0),
        "prune one per group": lambda: model.prune(layer_index=0, neuron_indices={0, 2, 5, 7}),
    }[edit]
    graph = model.dependency_graph()
    before, attributes = _snapshot(model, optimizer), _attributes(model)

    def refuse(record: Any) -> None:
        raise StoreDown("the store is down")

    model.add_observer(refuse)
    with pytest.raises(StoreDown):
        operation()
    assert_same(before, _snapshot(model, optimizer))
    assert _attributes(model) == attributes and model.dependency_graph() is graph
    model.remove_observer(refuse)
    operation()
    assert _attributes(model) != attributes


@pytest.mark.parametrize("edit", ["vit stream prune", "vit stream add", "lstm units prune", "lstm units add"])
def test_a_refused_edit_of_a_vit_stream_or_recurrent_units_puts_every_attribute_back(edit):
    from test_attention import _vit
    from test_tracer_layouts import Recurrent

    from weightslab.surgery import convert_to_ops

    torch.manual_seed(0)
    vit = edit.startswith("vit")
    model = convert_to_ops(_vit() if vit else Recurrent())
    x, y = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])) if vit else (torch.randn(4, 5, 4),
                                                                                 torch.tensor([0, 1, 1, 0]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    train_step(model, optimizer, x, y)
    index = 0 if vit else 1  # ViT's conv_proj (the stream); the LSTM
    operation = (lambda: model.prune(layer_index=index, neuron_indices={1, 4})) if edit.endswith("prune") \
        else (lambda: model.add_neurons(layer_index=index, neuron_count=2, seed=0))
    graph = model.dependency_graph()
    before, attributes = _snapshot(model, optimizer), _attributes(model)

    def refuse(record: Any) -> None:
        raise StoreDown("the store is down")

    model.add_observer(refuse)
    with pytest.raises(StoreDown):
        operation()
    assert_same(before, _snapshot(model, optimizer))
    assert _attributes(model) == attributes and model.dependency_graph() is graph
    model.remove_observer(refuse)
    operation()
    assert _attributes(model) != attributes
    train_step(model, optimizer, x, y)
