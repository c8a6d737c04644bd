"""Write-ahead deny/allow, and reproducible sampled deny from the owner's seed source.

A deny or allow is kept only once its observers recorded it: when one raises, the
deny flags and the dirty marks are put back and the observer's exception comes out.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from ledger_helpers import SEEN, assert_same_state, record_pass, synthetic_tensors

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger import LedgeredDataset

TUTORIAL_FN = lambda id, age, loss, times, denied, pred, label: loss <= 1.5  # noqa: E731 - the tutorial's


class StoreDown(RuntimeError):
    """What a failing observer raises."""


def _ledger() -> LedgeredDataset:
    """A seen ledger with some samples denied, some dirty and some clean."""
    ds = LedgeredDataset(synthetic_tensors(), "train")
    record_pass(ds, np.arange(SEEN), model_age=0)
    ds.drain_history()
    ds.denylist_samples(range(0, 3000, 3))
    ds.take_dirty_ids()
    record_pass(ds, np.arange(500, 700), model_age=SEEN, seed=2)  # dirty again: 500..699
    return ds


def _dirty(ds: LedgeredDataset) -> np.ndarray:
    """The dirty ids, read without clearing them."""
    ids = ds.take_dirty_ids()
    ds.stats.mark_dirty(ids)
    return ids


OPERATIONS: dict[str, Callable[[LedgeredDataset], int]] = {
    "deny/predicate": lambda ds: ds.deny_samples_with_predicate(TUTORIAL_FN),
    "deny/sampled": lambda ds: ds.deny_samples_and_sample_allowed_with_predicate(TUTORIAL_FN, 0.5, seed=7),
    "deny/ids": lambda ds: ds.denylist_samples(range(400, 800)),
    "deny/where": lambda ds: ds.deny_samples_where("prediction_loss <= 1.0"),
    "deny/recorded": lambda ds: ds.apply_recorded("deny", {"ids": [1, 2, 4, 5]}),
    "allow/ids": lambda ds: ds.allowlist_samples(range(0, 600)),
    "allow/all": lambda ds: ds.allowlist_samples(None),
    "allow/where": lambda ds: ds.allow_samples_where("prediction_loss <= 2.0"),
    "allow/recorded": lambda ds: ds.apply_recorded("allow", {"ids": [0, 3, 6]}),
}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_an_observer_that_raises_rolls_the_deny_or_allow_back(name):
    ds = _ledger()
    operation = OPERATIONS[name]
    before, dirty = ds.state_arrays(), _dirty(ds)
    refusal = StoreDown("the store is down")

    def refuse(record: Any) -> None:
        raise refusal

    ds.add_observer(refuse)
    with pytest.raises(StoreDown) as raised:
        operation(ds)
    assert raised.value is refusal
    assert_same_state(before, ds.state_arrays())
    np.testing.assert_array_equal(_dirty(ds), dirty)

    # The next operation works, exactly as on a ledger that never saw the refusal.
    ds.remove_observer(refuse)
    records: list[Any] = []
    ds.add_observer(records.append)
    twin = _ledger()
    assert operation(ds) == operation(twin) > 0
    assert len(records) == 1
    assert_same_state(twin.state_arrays(), ds.state_arrays())
    np.testing.assert_array_equal(_dirty(twin), _dirty(ds))


def test_with_the_same_seed_source_two_ledgers_deny_the_same_samples():
    ledgers, records = [_ledger(), _ledger()], []
    for ds in ledgers:
        counter = itertools.count(100)
        ds.set_seed_source(lambda counter=counter: next(counter))
        ds.add_observer(records.append)
        ds.deny_samples_and_sample_allowed_with_predicate(TUTORIAL_FN, 0.3)
        ds.deny_samples_and_sample_allowed_with_predicate(lambda id, *rest: id % 7 == 0, 1.0)
    np.testing.assert_array_equal(ledgers[0].stats.deny_listed, ledgers[1].stats.deny_listed)
    assert [r.args["seed"] for r in records] == [100, 101, 100, 101]
    assert records[0].args["ids"] == records[2].args["ids"] and records[0].result["kept_allowed"] > 0


def test_an_explicit_seed_wins_over_the_source_and_no_source_draws_secretly():
    ds, calls = _ledger(), []
    ds.set_seed_source(lambda: calls.append(1) or 5)
    records: list[Any] = []
    ds.add_observer(records.append)
    ds.deny_samples_and_sample_allowed_with_predicate(TUTORIAL_FN, 0.3, seed=9)
    ds.set_seed_source(None)
    ds.deny_samples_and_sample_allowed_with_predicate(lambda id, *rest: id % 5 == 0, 0.3)
    assert calls == [] and records[0].args["seed"] == 9 and 0 <= records[1].args["seed"] < 2**62


@pytest.mark.parametrize("bad", [-1, 2**62, 0.5, "1", None])
def test_a_source_returning_a_bad_seed_is_refused_and_changes_nothing(bad):
    ds = _ledger()
    ds.set_seed_source(lambda: bad)
    before, dirty = ds.state_arrays(), _dirty(ds)
    with pytest.raises(ConfigurationError, match=r"0\.\.2\*\*62-1"):
        ds.deny_samples_and_sample_allowed_with_predicate(TUTORIAL_FN, 0.3)
    assert_same_state(before, ds.state_arrays())
    np.testing.assert_array_equal(_dirty(ds), dirty)


def test_a_seed_source_that_is_not_a_function_is_refused():
    with pytest.raises(ConfigurationError, match="seed source"):
        _ledger().set_seed_source(12)


def test_a_failing_predicate_draws_no_seed():
    ds, calls = _ledger(), []
    ds.set_seed_source(lambda: calls.append(1) or 5)

    def broken(id, *rest):
        raise ValueError("boom")

    with pytest.raises(LedgerError):
        ds.deny_samples_and_sample_allowed_with_predicate(broken, 0.3)
    assert calls == []
