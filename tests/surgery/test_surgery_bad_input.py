"""Bad input: a clear error, and model, optimizer and statistics exactly as before."""

from __future__ import annotations

import math

import pytest
import torch
from surgery_helpers import assert_same, fingerprint, train_step
from surgery_models import MNISTModel, mnist_batch

from weightslab.errors import ConfigurationError, IndexSelectionError, SurgeryError
from weightslab.surgery import TrackingMode
from weightslab.surgery.selection import MAX_ADDED_NEURONS

CASES = {
    # name: (operation, expected error, words the message must contain)
    "layer index too large": (lambda m: m.prune(layer_index=4, neuron_indices={0}), IndexSelectionError, "0..3"),
    "layer index too negative": (lambda m: m.add_neurons(layer_index=-5, neuron_count=1), IndexSelectionError, "-4..-1"),
    "float layer index": (lambda m: m.prune(layer_index=1.0, neuron_indices={0}), IndexSelectionError, "integer"),
    "string layer index": (lambda m: m.reinit_neurons(layer_index="0", neuron_indices={0}), IndexSelectionError, "integer"),
    "empty neuron indices": (lambda m: m.prune(layer_index=1, neuron_indices=set()), IndexSelectionError, "empty"),
    "negative neuron index": (lambda m: m.prune(layer_index=1, neuron_indices={-1}), IndexSelectionError, "negative"),
    "duplicated neuron index": (lambda m: m.prune(layer_index=1, neuron_indices=[0, 0]), IndexSelectionError, "duplicates"),
    "neuron index out of range": (lambda m: m.prune(layer_index=1, neuron_indices={4}), IndexSelectionError, "0..3"),
    "list of strings": (lambda m: m.prune(layer_index=1, neuron_indices=["a", "b"]), IndexSelectionError, "integer"),
    "float neuron index": (lambda m: m.reinit_neurons(layer_index=1, neuron_indices=[1.5]), IndexSelectionError, "integer"),
    "a single int instead of a set": (lambda m: m.prune(layer_index=1, neuron_indices=2), IndexSelectionError, "collection"),
    "pruning every neuron": (lambda m: m.prune(layer_index=0, neuron_indices={0, 1}), SurgeryError, "every neuron"),
    "zero neuron count": (lambda m: m.add_neurons(layer_index=0, neuron_count=0), IndexSelectionError, "at least 1"),
    "negative neuron count": (lambda m: m.add_neurons(layer_index=0, neuron_count=-2), IndexSelectionError, "at least 1"),
    "float neuron count": (lambda m: m.add_neurons(layer_index=0, neuron_count=1.5), IndexSelectionError, "integer"),
    "absurd neuron count": (
        lambda m: m.add_neurons(layer_index=1, neuron_count=10**12), IndexSelectionError, "at most 65536 neurons"
    ),
    "one neuron more than a call may add": (
        lambda m: m.add_neurons(layer_index=0, neuron_count=MAX_ADDED_NEURONS + 1), IndexSelectionError, "at most"
    ),
    "planning an absurd add": (
        lambda m: m.plan_add_neurons(layer_index=1, neuron_count=10**12), IndexSelectionError, "at most 65536"
    ),
    "negative perturbation": (
        lambda m: m.reinit_neurons(layer_index=0, neuron_indices={0}, perturbation_ratio=-0.1), ConfigurationError, ">= 0"
    ),
    "nan perturbation": (
        lambda m: m.reinit_neurons(layer_index=0, neuron_indices={0}, perturbation_ratio=math.nan), ConfigurationError, "finite"
    ),
    "infinite perturbation": (
        lambda m: m.reinit_neurons(layer_index=0, neuron_indices={0}, perturbation_ratio=math.inf), ConfigurationError, "finite"
    ),
    "negative lr": (lambda m: m.layers[0].set_per_neuron_learning_rate({0}, lr=-1.0), ConfigurationError, ">= 0"),
    "nan lr": (lambda m: m.layers[0].set_per_incoming_neuron_learning_rate({0}, lr=math.nan), ConfigurationError, "finite"),
    "infinite lr": (lambda m: m.set_per_neuron_learning_rate(1, {0}, lr=math.inf), ConfigurationError, "finite"),
    "incoming neuron out of range": (
        lambda m: m.layers[0].set_per_incoming_neuron_learning_rate(set(range(0, 2)), lr=0.0), IndexSelectionError, "0..0"
    ),
    "pruning the output layer": (lambda m: m.prune(layer_index=3, neuron_indices={0}), SurgeryError, "model's output"),
    "adding to the output layer": (lambda m: m.add_neurons(layer_index=-1, neuron_count=2), SurgeryError, "model's output"),
    "freeze index out of range": (lambda m: m.freeze_layers_up_to_idx(4), IndexSelectionError, "0..3"),
    "unfreeze float index": (lambda m: m.unfreeze_layers_from_idx(0.5), IndexSelectionError, "integer"),
    "negative seed": (lambda m: m.add_neurons(layer_index=0, neuron_count=1, seed=-1), ConfigurationError, "seed"),
}


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    model.tracking_mode = TrackingMode.TRAIN
    x, y = mnist_batch(16)
    for _ in range(2):
        train_step(model, optimizer, x, y)
    model.layers[1].set_per_neuron_learning_rate({2}, lr=0.5)
    return model, optimizer


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(case, trained):
    model, optimizer = trained
    operation, error, words = CASES[case]
    log = []
    model.add_observer(log.append)
    before = fingerprint(model, optimizer)
    with pytest.raises(error) as raised:
        operation(model)
    assert words in str(raised.value)
    assert_same(before, fingerprint(model, optimizer))
    assert log == []


class HardCodedView(MNISTModel):
    """The classic mistake: a flatten with a fixed width, which a prune of layer2 would break."""

    def forward(self, input):
        x = self.mpool0(torch.relu(self.layer0(input)))
        x = self.mpool1(torch.relu(self.layer1(x)))
        x = self.mpool2(torch.relu(self.layer2(x)))
        return self.out(x.view(-1, 10))


def test_an_edit_that_would_break_the_forward_pass_is_refused_unchanged():
    torch.manual_seed(0)
    model = HardCodedView()
    model(mnist_batch(2)[0])
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"x.view\(x.size\(0\), -1\)"):
        model.prune(layer_index=2, neuron_indices={0})
    assert_same(before, fingerprint(model))


def test_structural_edit_before_any_forward_pass_asks_for_one():
    model = MNISTModel()
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match="forward pass"):
        model.prune(layer_index=0, neuron_indices={0})
    assert_same(before, fingerprint(model))


def test_layers_list_with_a_plain_module_is_rejected():
    model = MNISTModel()
    with pytest.raises(ConfigurationError, match="convert_to_ops"):
        model.layers = [model.layer0, model.mpool0]


def test_a_failure_while_installing_rolls_every_tensor_back(trained, monkeypatch):
    import weightslab.surgery.apply as apply

    model, optimizer = trained
    before = fingerprint(model, optimizer)
    real, calls = apply.install_data, []

    def flaky(param, new):
        calls.append(param)
        if len(calls) == 3:  # fail half-way through the edit, after some tensors were swapped
            raise RuntimeError("disk on fire")
        real(param, new)

    monkeypatch.setattr(apply, "install_data", flaky)
    with pytest.raises(SurgeryError, match="rolled back"):
        model.prune(layer_index=1, neuron_indices={0})
    monkeypatch.setattr(apply, "install_data", real)
    assert_same(before, fingerprint(model, optimizer))
    model.prune(layer_index=1, neuron_indices={0})  # and the model is still editable


def test_an_absurd_add_is_refused_before_anything_is_allocated_and_names_the_bound(trained):
    model, optimizer = trained
    before = fingerprint(model, optimizer)
    with pytest.raises(IndexSelectionError) as raised:
        model.add_neurons(layer_index=1, neuron_count=10**12)  # ~113 TiB of new rows in layer 1 alone
    message = str(raised.value)
    assert "one add_neurons call adds at most 65536 neurons" in message
    assert "TiB" in message and "Add fewer neurons" in message
    assert_same(before, fingerprint(model, optimizer))
