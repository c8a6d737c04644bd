"""Bad input to deny/allow: a clear error, and the ledger exactly as it was, with no notification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ledger_helpers import assert_same_state

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger import LedgeredDataset


@pytest.fixture
def guarded(synth_seen):
    """The seen ledger with a few denies, an observer, and a check that a refusal changed nothing."""
    synth_seen.denylist_samples({10, 11})
    records: list = []
    synth_seen.add_observer(records.append)
    before = synth_seen.state_arrays()
    yield synth_seen
    assert_same_state(before, synth_seen.state_arrays())
    assert records == []


def test_predicate_raising_refuses_the_whole_deny_naming_the_first_failing_id(guarded):
    def fn(id, age, loss, times, denied, pred, label):
        if id in (1234, 5000):
            raise ZeroDivisionError("boom")
        return True

    with pytest.raises(LedgerError, match=r"ZeroDivisionError.*sample id 1234 ") as info:
        guarded.deny_samples_with_predicate(fn)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_predicate_returning_a_non_bool_is_refused(guarded):
    with pytest.raises(LedgerError, match=r"returned 1 \(int\) for sample id 0.*must return a bool"):
        guarded.deny_samples_with_predicate(lambda *a: 1)
    with pytest.raises(LedgerError, match="sample id 50000"):  # NaN loss of a never-seen sample is not a bool
        guarded.deny_samples_with_predicate(lambda id, age, loss, *r: loss if id >= 50000 else False)


def test_predicate_returning_numpy_bools_is_accepted(synth_seen):
    assert synth_seen.deny_samples_with_predicate(lambda id, *r: np.bool_(id < 3)) == 3


def test_ids_not_in_the_dataset_are_named(guarded):
    with pytest.raises(
        LedgerError, match=r"3 sample id\(s\) are not in this dataset of 60000 samples \(-1, 60000, 70000\)"
    ):
        guarded.denylist_samples({1, -1, 60000, 70000})
    with pytest.raises(LedgerError, match=r"\.\.\."):
        guarded.allowlist_samples(range(60000, 60010))


@pytest.mark.parametrize("ids", ["12", 3, 2.5, [1.5, 2.0], [True, False], None])
def test_ids_that_are_not_a_collection_of_integers_are_a_configuration_error(guarded, ids):
    with pytest.raises(ConfigurationError, match="integers"):
        guarded.denylist_samples(ids)


@pytest.mark.parametrize("factor", [-1, -0.5, math.nan, math.inf])
def test_negative_or_non_finite_factor_is_refused(guarded, factor):
    with pytest.raises(LedgerError, match="finite and >= 0"):
        guarded.deny_samples_and_sample_allowed_with_predicate(lambda *a: True, allow_to_denied_factor=factor)


@pytest.mark.parametrize("factor", ["3", None, True])
def test_factor_of_the_wrong_type_is_a_configuration_error(guarded, factor):
    with pytest.raises(ConfigurationError, match="allow_to_denied_factor"):
        guarded.deny_samples_and_sample_allowed_with_predicate(lambda *a: True, allow_to_denied_factor=factor)


@pytest.mark.parametrize(
    "query",
    ["prediction_loss <=", "no_such_column > 1", "__import__('os')", "", "columns > 1", "query == query"],
)
def test_invalid_query_is_refused_naming_the_columns(guarded, query):
    with pytest.raises(LedgerError, match="prediction_loss"):
        guarded.deny_samples_where(query)


@pytest.mark.parametrize(
    "query", ["prediction_loss + 1", "exposure_amount", "1 > 0", "prediction_loss.sum() > 1"]
)
def test_query_that_is_not_a_condition_is_refused(guarded, query):
    with pytest.raises(LedgerError, match="True/False per sample"):
        guarded.deny_samples_where(query)


def test_query_that_is_not_a_string_is_a_configuration_error(guarded):
    with pytest.raises(ConfigurationError):
        guarded.deny_samples_where(lambda *a: True)


def test_denying_every_training_sample_is_refused(guarded):
    with pytest.raises(LedgerError, match="empty training set cannot train"):
        guarded.deny_samples_with_predicate(lambda *a: True)
    with pytest.raises(LedgerError, match="empty training set cannot train"):
        guarded.deny_samples_where("exposure_amount >= 0")
    with pytest.raises(LedgerError, match="empty training set cannot train"):
        guarded.denylist_samples(range(60_000))
    with pytest.raises(LedgerError, match="empty training set cannot train"):
        guarded.deny_samples_and_sample_allowed_with_predicate(lambda *a: True, allow_to_denied_factor=0)


def test_denying_all_but_one_training_sample_is_allowed(synth_seen):
    assert synth_seen.denylist_samples(range(1, 60_000)) == 59_999


def test_non_callable_predicate_is_a_configuration_error(guarded):
    with pytest.raises(ConfigurationError, match="callable"):
        guarded.deny_samples_with_predicate("loss <= 1.5")


def test_wrapping_a_non_pair_item_says_what_is_expected():
    ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(3, 2)), "train")
    with pytest.raises(LedgerError, match=r"not an \(input, label\) pair"):
        ds[0]


@pytest.mark.parametrize("split", ["", None, 3])
def test_bad_split_name_is_a_configuration_error(split):
    with pytest.raises(ConfigurationError, match="split"):
        LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.zeros(3)), split)
