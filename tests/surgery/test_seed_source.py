"""The owner's seed source: reproducible add/reinit draws without passing ``seed=`` to each call."""

from __future__ import annotations

import copy
import itertools
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from surgery_helpers import assert_same, fingerprint
from surgery_models import MNISTModel, mnist_batch

from weightslab.errors import ConfigurationError, SurgeryError


def _model() -> MNISTModel:
    torch.manual_seed(0)
    model = MNISTModel()
    model(mnist_batch(2)[0])
    return model


def _counting_source(start: int = 1000) -> tuple[Callable[[], int], list[int]]:
    drawn: list[int] = []
    counter = itertools.count(start)

    def source() -> int:
        drawn.append(next(counter))
        return drawn[-1]

    return source, drawn


def _edit(model: MNISTModel) -> None:
    model.add_neurons(layer_index=1, neuron_count=3)
    model.reinit_neurons(layer_index=0, neuron_indices={0})
    model.reinit_neurons(layer_index=2, neuron_indices={1, 4}, perturbation_ratio=0.5)


def test_with_the_same_seed_source_identical_models_draw_bit_identical_weights():
    models, logs = [], []
    for _ in range(2):
        model, log = _model(), []
        model.add_observer(log.append)
        model.set_seed_source(_counting_source()[0])
        _edit(model)
        models.append(model)
        logs.append(log)
    assert_same(models[0].state_dict(), models[1].state_dict())
    assert [r.args["seed"] for r in logs[0]] == [1000, 1001, 1002]  # the seeds used are recorded
    assert [r.args for r in logs[0]] == [r.args for r in logs[1]]


def test_a_different_source_draws_different_weights():
    a, b = _model(), _model()
    a.set_seed_source(lambda: 1)
    b.set_seed_source(lambda: 2)
    a.add_neurons(layer_index=1, neuron_count=3)
    b.add_neurons(layer_index=1, neuron_count=3)
    assert not torch.equal(a.layer1.weight, b.layer1.weight)


def test_an_explicit_seed_wins_over_the_source():
    model = _model()
    source, drawn = _counting_source()
    model.set_seed_source(source)
    log: list[Any] = []
    model.add_observer(log.append)
    model.add_neurons(layer_index=1, neuron_count=2, seed=77)
    model.reinit_neurons(layer_index=1, neuron_indices={0}, seed=78)
    assert drawn == [] and [r.args["seed"] for r in log] == [77, 78]


def test_a_refused_operation_draws_no_seed():
    model = _model()
    source, drawn = _counting_source()
    model.set_seed_source(source)
    with pytest.raises(SurgeryError):
        model.add_neurons(layer_index=3, neuron_count=2)  # the output layer
    with pytest.raises(SurgeryError):
        model.reinit_neurons(layer_index=0, neuron_indices={5})
    assert drawn == []


def test_removing_the_source_draws_secret_seeds_again():
    model = _model()
    source, drawn = _counting_source()
    model.set_seed_source(source)
    model.set_seed_source(None)
    log: list[Any] = []
    model.add_observer(log.append)
    model.add_neurons(layer_index=1, neuron_count=1)
    assert drawn == [] and 0 <= log[0].args["seed"] < 2**62


@pytest.mark.parametrize("bad", [-1, 2**62, 1.5, "7", True, None])
def test_a_source_returning_a_bad_seed_is_refused_and_changes_nothing(bad):
    model = _model()
    log: list[Any] = []
    model.add_observer(log.append)
    model.set_seed_source(lambda: bad)
    before = fingerprint(model)
    for operation in (
        lambda: model.add_neurons(layer_index=1, neuron_count=2),
        lambda: model.reinit_neurons(layer_index=1, neuron_indices={0}),
    ):
        with pytest.raises(ConfigurationError, match=r"0\.\.2\*\*62-1"):
            operation()
    assert_same(before, fingerprint(model))
    assert log == []


@pytest.mark.parametrize("bad", [42, "secrets", [1, 2]])
def test_a_source_that_is_not_a_function_is_refused(bad):
    model = _model()
    with pytest.raises(ConfigurationError, match="seed source"):
        model.set_seed_source(bad)


def test_the_source_stays_with_the_original_model():
    model = _model()
    source, drawn = _counting_source()
    model.set_seed_source(source)
    twin = copy.deepcopy(model)
    unpickled = pickle.loads(pickle.dumps(model))  # noqa: S301 - our own bytes, just made
    twin.add_neurons(layer_index=1, neuron_count=1)
    unpickled.add_neurons(layer_index=1, neuron_count=1)
    assert drawn == []
    model.add_neurons(layer_index=1, neuron_count=1)
    assert drawn == [1000]
