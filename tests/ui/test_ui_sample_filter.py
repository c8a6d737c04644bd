"""The samples page's filter: the same expressions as ``deny_samples_where``, the same samples, run in SQL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel, digits_datasets
from weightslab.errors import ConfigurationError
from weightslab.ledger.selection import query_mask
from weightslab.ui.sample_filter import MAX_LENGTH, to_sql

# What a user writes in deny_samples_where, missing values (never-seen samples) included.
EXPRESSIONS = [
    "prediction_loss > 1.5",
    "prediction_loss <= 0.5",
    "prediction_loss != 0.5",
    "not (prediction_loss > 1.0)",
    "~(prediction_loss > 1.0) & (exposure_amount >= 1)",
    "0.2 < prediction_loss <= 2",
    "label in [1, 3, 5]",
    "label not in [1, 3, 5]",
    "prediction != label",
    "prediction == label and prediction_loss > 0.1",
    "not (prediction == label)",
    "prediction in [0, 9] or sample_id % 7 == 0",
    "deny_listed",
    "not deny_listed and exposure_amount == 0",
    "deny_listed == True",
    "prediction_age > 100 or prediction_loss * 2 + 1 > 3",
    "prediction_loss / 2 > 0.4",
    "-prediction_loss < -1",
    "(sample_id < 10) | (sample_id > 1490)",
    "exposure_amount > 0 and prediction_loss != prediction_loss",  # NaN test: seen samples have a loss
]


@pytest.fixture
def trained(store_target, tmp_path):
    """An experiment after part of an epoch (many samples never seen) and a deny, its statistics flushed."""
    torch.manual_seed(0)
    train_ds, eval_ds = digits_datasets()
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds, eval_dataset=eval_ds,
                     batch_size=64, learning_rate=1e-2, name="filtered", store=store_target,
                     tensorboard_dir=str(tmp_path / "tb"))
    exp.train_n_steps(20)  # 1,280 of 1,498 samples seen once
    exp.eval_n_steps(2)
    exp.train_loader.dataset.deny_samples_where("prediction_loss > 2.0")
    exp.flush()
    try:
        yield exp
    finally:
        exp.close()
        exp.store.close()


def test_the_database_selects_the_samples_deny_samples_where_selects(trained):
    stats = trained.train_loader.dataset.stats
    wrong, proper_subsets = [], 0
    for expression in EXPRESSIONS:
        expected = np.flatnonzero(query_mask(expression, stats)).tolist()
        condition = to_sql(expression)
        got = trained.sql(f"SELECT sample_id FROM sample_stats WHERE experiment_id = :experiment_id "
                          f"AND split = 'train' AND {condition.sql} ORDER BY sample_id", condition.params)
        if got["sample_id"].tolist() != expected:
            wrong.append((expression, len(expected), len(got)))
        proper_subsets += 0 < len(expected) < stats.size
    assert wrong == []
    assert proper_subsets >= len(EXPRESSIONS) - 4  # the expressions tell samples apart


def test_values_are_bound_and_columns_come_from_a_fixed_list():
    c = to_sql("prediction_loss > 1.5 and label in [3, 5]")
    assert c.params == {"f0": 1.5, "f1": 3, "f2": 5}
    assert "1.5" not in c.sql and ":f0" in c.sql


@pytest.mark.parametrize("expression, says", [
    ("", "non-empty"),
    ("loss > 1", "unknown column 'loss'"),
    ("__import__('os').system('id')", "cannot use"),
    ("prediction_loss.abs() > 1", "cannot use"),
    ("@threshold < prediction_loss", "not an expression"),
    ("label == 'cat'", "the columns are numbers"),
    ("prediction_loss ** 2 > 1", "cannot use"),
    ("prediction_loss // 2 > 1", "cannot use"),
    ("prediction_loss + 1", "not True/False"),
    ("label in (x for x in [1])", "list of numbers"),
    ("label in [prediction]", "list of numbers"),
    ("deny_listed + 1 > 0", "needs a number"),
    ("prediction_loss > 1; DROP TABLE events", "not an expression"),
    ("x" * (MAX_LENGTH + 1), "at most"),
    (" and ".join(["label<1"] * 80), "parts"),
    ("(" * 300 + "1" + ")" * 300 + " > 0", "not an expression"),
])
def test_anything_outside_the_language_is_refused_saying_what_is_allowed(expression, says):
    with pytest.raises(ConfigurationError) as e:
        to_sql(expression)
    assert says in str(e.value), str(e.value)
