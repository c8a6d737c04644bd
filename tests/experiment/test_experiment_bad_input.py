"""Bad constructor and call arguments: clear errors, nothing recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from weightslab.errors import ConfigurationError


def _store_rows(store_target):
    from weightslab.history.store import Store

    with Store.open(store_target) as s:
        return len(s.list_experiments()), s.query("SELECT COUNT(*) AS n FROM events")["n"].iloc[0]


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": -3}, "batch_size must be a positive integer"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"optimizer_class": nn.Linear}, "torch.optim.Optimizer subclass"),
    ({"optimizer_class": "adam"}, "torch.optim.Optimizer subclass"),
    ({"criterion": nn.NLLLoss()}, "reduction='none'"),
    ({"criterion": lambda out, y: out.sum()}, "one loss per sample"),
    ({"criterion": nn.MSELoss(reduction="none")}, "cannot use these labels"),
    ({"model": nn.Sequential(nn.Flatten(), nn.Linear(784, 10))}, "convert_to_ops"),
    ({"train_dataset": TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))}, "empty"),
    ({"eval_dataset": TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))}, "empty"),
    ({"eval_dataset": TensorDataset(torch.zeros(4, 1, 28, 28), torch.full((4,), 99))}, "cannot use these labels"),
    ({"name": ""}, "name must be a non-empty string"),
])
def test_bad_constructor_arguments_are_refused_and_nothing_is_recorded(make_exp, store_target, change, message):
    make_exp("existing")
    before = _store_rows(store_target)
    with pytest.raises(ConfigurationError, match=message):
        change = dict(change)
        make_exp(change.pop("name", "new-one"), **change)
    assert _store_rows(store_target) == before


@pytest.mark.parametrize("steps", [0, -1, 2.5, "3", True])
def test_bad_step_counts_are_refused(make_exp, steps):
    exp = make_exp()
    n = len(exp.events())
    for call in (exp.train_n_steps, exp.eval_n_steps, exp.train_n_steps_with_eval_full):
        with pytest.raises(ConfigurationError, match="positive integer"):
            call(steps)
    assert len(exp.events()) == n


def test_unknown_checkpoint_lists_the_existing_ones(make_exp):
    exp = make_exp()
    with pytest.raises(ConfigurationError, match=r"call exp.dump\(\) first"):
        exp.load(checkpoint_id=0)
    exp.dump()
    exp.dump()
    n = len(exp.events())
    with pytest.raises(ConfigurationError, match=r"existing checkpoints: \[0, 1\]"):
        exp.load(checkpoint_id=5)
    with pytest.raises(ConfigurationError, match="must be an integer"):
        exp.load(checkpoint_id="0")
    assert len(exp.events()) == n


def test_reopening_with_other_data_is_refused(make_exp, digits):
    make_exp("data").train_n_steps(1)
    train_ds, eval_ds = digits
    x, y = train_ds.tensors
    with pytest.raises(ConfigurationError, match="different train dataset"):
        make_exp("data", train_dataset=TensorDataset(x[:-1], y[:-1]))


def test_a_non_ops_model_error_points_to_the_conversion(make_exp):
    from weightslab import convert_to_ops

    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10),
                          nn.LogSoftmax(dim=1))
    with pytest.raises(ConfigurationError, match="convert_to_ops"):
        make_exp("plain", model=plain)
    exp = make_exp("converted", model=convert_to_ops(plain))
    exp.train_n_steps(2)
    exp.model.prune(layer_index=0, neuron_indices={1})
    assert exp.model.layers[0].neuron_count == 3
