"""Every successful operation hands exactly one record to the observers; refusals none."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from surgery_helpers import assert_same
from surgery_models import MNISTModel, mnist_batch

from weightslab.errors import WeightsLabError
from weightslab.events.domain import EditEvent, EventKind, event_class


def _model_with_log():
    torch.manual_seed(0)
    model = MNISTModel()
    model(mnist_batch(2)[0])
    log = []
    model.add_observer(log.append)
    return model, log


def _run_tutorial_operations(model):
    model.add_neurons(layer_index=0, neuron_count=4)
    model.prune(layer_index=0, neuron_indices={0, 2, 4})
    model.reinit_neurons(layer_index=0, neuron_indices={1, 2})
    model.reinit_neurons(layer_index=0, neuron_indices={1, 2}, perturbation_ratio=0.2)
    model.layers[0].set_per_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    model.layers[1].set_per_incoming_neuron_learning_rate(set(range(0, 2)), lr=0.5)
    model.freeze_layers_up_to_idx(1)
    model.unfreeze_layers_from_idx(1)


def test_each_operation_notifies_exactly_one_record_with_replayable_args():
    model, log = _model_with_log()
    _run_tutorial_operations(model)
    assert [r.kind for r in log] == [
        EventKind.ADD_NEURONS,
        EventKind.PRUNE,
        EventKind.REINIT_NEURONS,
        EventKind.REINIT_NEURONS,
        EventKind.SET_NEURON_LR,
        EventKind.SET_INCOMING_NEURON_LR,
        EventKind.FREEZE,
        EventKind.UNFREEZE,
    ]
    assert log[0].args["layer_index"] == 0 and log[0].args["neuron_count"] == 4
    assert isinstance(log[0].args["seed"], int)
    assert log[1].args == {"layer_index": 0, "neuron_indices": [0, 2, 4]}
    assert log[1].result["widths"] == [3, 4, 10, 10]
    assert log[3].args["perturbation_ratio"] == 0.2
    assert log[4].args == {"layer_index": 0, "neuron_indices": [0, 1], "lr": 0.0}
    assert log[6].args == {"up_to_index": 1}
    for record in log:
        json.dumps({"args": dict(record.args), "result": dict(record.result)})


def test_replaying_the_records_rebuilds_the_same_model_and_spares_the_global_rng():
    model, log = _model_with_log()
    rng = torch.random.get_rng_state()
    _run_tutorial_operations(model)
    assert torch.equal(rng, torch.random.get_rng_state())
    torch.manual_seed(0)
    replica = MNISTModel()
    replica(mnist_batch(2)[0])
    for record in log:
        method = event_class(record.kind)
        assert issubclass(method, EditEvent)
        getattr(replica, method.METHOD)(**record.args)
    assert_same(model.state_dict(), replica.state_dict())


def test_refused_operations_notify_nothing():
    model, log = _model_with_log()
    with pytest.raises(WeightsLabError):
        model.prune(layer_index=3, neuron_indices={0})
    with pytest.raises(WeightsLabError):
        model.layers[0].set_per_neuron_learning_rate({7}, lr=0.5)
    assert log == []


def test_a_copy_of_the_model_routes_layer_operations_to_its_own_observers():
    model, log = _model_with_log()
    copy = pickle.loads(pickle.dumps(model))  # noqa: S301 - our own bytes, just made
    copied_log = []
    copy.add_observer(copied_log.append)
    copy.layers[1].set_per_neuron_learning_rate({0}, lr=0.5)
    assert log == [] and len(copied_log) == 1
    assert copy.layer1.lr_row_multiplier[0] == 0.5 and model.layer1.lr_row_multiplier[0] == 1.0


def test_a_deep_copy_is_independent_and_editable():
    model, log = _model_with_log()
    twin = copy.deepcopy(model)
    twin_log = []
    twin.add_observer(twin_log.append)
    twin.prune(layer_index=1, neuron_indices={0})
    assert model.layer1.out_channels == 4 and twin.layer1.out_channels == 3
    assert log == [] and len(twin_log) == 1
