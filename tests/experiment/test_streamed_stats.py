"""A long training call hands its changed sample rows to the statistics writer while it trains (issue #26).

The rows in ``sample_stats`` are the same, value for value, as when they are written once at the call's event;
a call that fails puts back the rows it wrote, so SQL shows the statistics of the last event again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_failed_writes import events_refused

from weightslab.errors import StoreError
from weightslab.experiment import batch_results
from weightslab.experiment.recorder import Recorder
from weightslab.ledger.stats import STAT_COLUMNS

COLUMNS = ["sample_id", *STAT_COLUMNS]


def _sql(exp, split: str) -> pd.DataFrame:
    exp.flush()
    return exp.sql(f"SELECT {', '.join(COLUMNS)} FROM sample_stats WHERE experiment_id = :experiment_id "
                   "AND split = :s ORDER BY sample_id", {"s": split}).reset_index(drop=True)


def _ledger_rows(exp, split: str) -> pd.DataFrame:
    """The rows the ledger holds now, as the statistics writer is given them (NaN for null)."""
    stats = (exp.train_loader if split == "train" else exp.eval_loader).dataset.stats
    return pd.DataFrame(stats.rows(np.arange(stats.size)))[COLUMNS]


def _assert_same_rows(sql: pd.DataFrame, rows: pd.DataFrame) -> None:
    assert len(sql) == len(rows)
    np.testing.assert_array_equal(sql["sample_id"].to_numpy(np.int64), rows["sample_id"].to_numpy())
    for name in STAT_COLUMNS:
        got, want = sql[name].astype(np.float64).to_numpy(), rows[name].astype(np.float64).to_numpy()
        if name == "prediction_loss":  # stored as float32 values: compare those bits
            got, want = got.astype(np.float32), want.astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=name)


class _Handovers:
    """Counts the writer's hand-overs of changed rows (and passes each on), for every Recorder."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        original = Recorder.write_changed_rows

        def counted(recorder: Recorder) -> None:
            self.calls += 1
            original(recorder)
        monkeypatch.setattr(Recorder, "write_changed_rows", counted)


def test_rows_written_while_training_equal_the_rows_of_one_write_at_the_event(make_exp, monkeypatch):
    streamed = make_exp("streamed")
    monkeypatch.setattr(batch_results, "FLUSH_SAMPLES", 128)  # a flush, and a hand-over, every 2 batches of 64
    handovers = _Handovers(monkeypatch)
    streamed.train_n_steps(30)  # past the end of the first epoch: some samples are seen twice
    streamed.eval_n_steps(3)
    assert handovers.calls >= 10
    monkeypatch.setattr(batch_results, "FLUSH_SAMPLES", 1 << 20)
    at_event = make_exp("at-event")
    at_event.train_n_steps(30)
    at_event.eval_n_steps(3)
    for split in ("train", "eval"):
        sql = _sql(streamed, split)
        _assert_same_rows(sql, _ledger_rows(streamed, split))
        pd.testing.assert_frame_equal(sql, _sql(at_event, split))
    assert (_sql(streamed, "train")["exposure_amount"] == 2).any()


def test_a_call_that_fails_after_writing_rows_puts_back_the_rows_of_the_last_event(make_exp, monkeypatch):
    exp = make_exp("fails")
    exp.train_n_steps(4)
    before = _sql(exp, "train")
    monkeypatch.setattr(batch_results, "FLUSH_SAMPLES", 64)  # every batch's rows go to the writer at once
    handovers = _Handovers(monkeypatch)
    with events_refused(exp.store), pytest.raises(StoreError):
        exp.train_n_steps(12)
    assert handovers.calls >= 11
    after = _sql(exp, "train")
    pd.testing.assert_frame_equal(after, before)
    _assert_same_rows(after, _ledger_rows(exp, "train"))
    exp.train_n_steps(12)  # and the next call writes its rows as usual
    _assert_same_rows(_sql(exp, "train"), _ledger_rows(exp, "train"))
