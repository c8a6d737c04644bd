"""Ledger state export: numeric arrays that restore the statistics and deny list exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ledger_helpers import SEEN, assert_same_state, record_pass

from weightslab.errors import LedgerError
from weightslab.ledger import STAT_COLUMNS, LedgeredDataset


def test_state_arrays_hold_every_column_as_plain_numeric_arrays(synth_seen):
    state = synth_seen.state_arrays()
    assert list(state) == list(STAT_COLUMNS)
    assert all(v.dtype == STAT_COLUMNS[k] and v.shape == (60_000,) for k, v in state.items())


def test_state_round_trip_is_exact_after_more_training_and_denies(synth_seen):
    synth_seen.denylist_samples(range(0, 60_000, 9))
    saved = synth_seen.state_arrays()
    df_saved = synth_seen.get_dataframe()
    record_pass(synth_seen, np.arange(60_000), model_age=10**6, seed=3)
    synth_seen.allowlist_samples(None)
    synth_seen.denylist_samples({1, 2})
    synth_seen.load_state_arrays(saved)
    assert_same_state(saved, synth_seen.state_arrays())
    assert synth_seen.get_dataframe().equals(df_saved)


def test_state_is_a_copy_not_a_view(synth_seen):
    saved = synth_seen.state_arrays()
    synth_seen.denylist_samples({0})
    assert not saved["deny_listed"][0]


def test_state_loads_into_a_fresh_wrapper_of_the_same_dataset(synth_seen):
    fresh = LedgeredDataset(synth_seen.wrapped, "train")
    fresh.load_state_arrays(synth_seen.state_arrays())
    assert fresh.get_dataframe().equals(synth_seen.get_dataframe())
    assert fresh.get_dataframe()["prediction_loss"].isna().sum() == 60_000 - SEEN


def test_loading_marks_dirty_the_samples_it_changes_and_discards_undrained_history(synth_seen):
    saved = synth_seen.state_arrays()
    synth_seen.update_batch(torch.arange(10), torch.zeros(10), torch.zeros(10), torch.zeros(10), 5)
    synth_seen.take_dirty_ids()  # as if flushed: SQL holds the trained values of 0..9
    synth_seen.denylist_samples({20})  # changed, not yet flushed
    synth_seen.load_state_arrays(saved)
    # 0..9 go back to their saved values and 20 is allowed again: only their rows must be written
    np.testing.assert_array_equal(synth_seen.take_dirty_ids(), [*range(10), 20])
    assert all(len(v) == 0 for v in synth_seen.drain_history().values())


def test_loading_an_unchanged_state_marks_nothing_but_keeps_what_was_dirty(synth_seen):
    synth_seen.update_batch(torch.tensor([4, 2]), torch.ones(2), torch.ones(2), torch.ones(2), 7)
    synth_seen.load_state_arrays(synth_seen.state_arrays())
    np.testing.assert_array_equal(synth_seen.take_dirty_ids(), [2, 4])
    synth_seen.load_state_arrays(synth_seen.state_arrays())
    assert len(synth_seen.take_dirty_ids()) == 0


def test_a_nan_loss_reloaded_bit_for_bit_is_not_a_change(synth_seen):
    """Never-seen samples hold NaN losses: NaN != NaN must not make every one of them dirty."""
    assert np.isnan(synth_seen.stats.prediction_loss).sum() == 60_000 - SEEN
    synth_seen.load_state_arrays(synth_seen.state_arrays())
    assert len(synth_seen.take_dirty_ids()) == 0


def test_loading_does_not_notify_observers(synth_seen):
    records: list = []
    synth_seen.add_observer(records.append)
    synth_seen.load_state_arrays(synth_seen.state_arrays())
    assert records == []


def test_state_of_another_size_or_missing_column_is_refused_and_changes_nothing(synth_seen):
    before = synth_seen.state_arrays()
    small = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(5, 1), torch.zeros(5)), "train")
    with pytest.raises(LedgerError, match="another size"):
        synth_seen.load_state_arrays(small.state_arrays())
    with pytest.raises(LedgerError, match="lacks columns"):
        synth_seen.load_state_arrays({k: v for k, v in before.items() if k != "label"})
    bad_dtype = {**before, "exposure_amount": before["exposure_amount"].astype(np.float64)}
    with pytest.raises(LedgerError, match="dtype"):
        synth_seen.load_state_arrays(bad_dtype)
    assert_same_state(before, synth_seen.state_arrays())
