"""Bulk statistics upserts and Parquet snapshots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from weightslab.history.stats import upsert_neuron_stats, upsert_sample_stats


def _columns(n, seed=0):
    rng = np.random.default_rng(seed)
    loss = rng.random(n)
    loss[::7] = np.nan  # never-seen samples
    age = np.where(np.isnan(loss), np.nan, rng.integers(0, 10**6, n)).astype(float)
    return dict(sample_id=np.arange(n), prediction_age=age, prediction_loss=loss,
                exposure_amount=rng.integers(0, 5, n), deny_listed=rng.random(n) < 0.1,
                prediction=np.where(np.isnan(loss), np.nan, rng.integers(0, 10, n)),
                label=rng.integers(0, 10, n))


def test_sample_stats_upsert_inserts_then_updates_60k_rows(store):
    e = store.create_experiment("a").experiment_id
    cols = _columns(60_000)
    with store.transaction() as conn:
        assert upsert_sample_stats(conn, e, "train", cols) == 60_000
    cols2 = dict(cols)
    cols2["exposure_amount"] = cols["exposure_amount"] + 1
    with store.transaction() as conn:
        upsert_sample_stats(conn, e, "train", cols2)
    df = store.query("SELECT * FROM sample_stats WHERE experiment_id = :e ORDER BY sample_id", {"e": e})
    assert len(df) == 60_000
    assert (df["exposure_amount"].to_numpy() == cols2["exposure_amount"]).all()
    never = np.isnan(cols["prediction_loss"])
    assert df["prediction_loss"].isna().to_numpy().tolist() == never.tolist()
    assert np.allclose(df["prediction_loss"].to_numpy(dtype=float)[~never], cols["prediction_loss"][~never], rtol=0,
                       atol=0)
    assert df["deny_listed"].astype(bool).to_numpy().tolist() == cols["deny_listed"].tolist()


def test_splits_are_kept_apart(store):
    e = store.create_experiment("a").experiment_id
    with store.transaction() as conn:
        upsert_sample_stats(conn, e, "train", _columns(10, 1))
        upsert_sample_stats(conn, e, "eval", _columns(4, 2))
    df = store.query("SELECT split, COUNT(*) AS n FROM sample_stats GROUP BY split ORDER BY split")
    assert df.to_dict("list") == {"split": ["eval", "train"], "n": [4, 10]}


def test_neuron_stats_upsert(store):
    e = store.create_experiment("a").experiment_id
    rows = [(0, i, "train", "layer0", i * 3, 100) for i in range(4)]
    with store.transaction() as conn:
        upsert_neuron_stats(conn, e, rows)
        upsert_neuron_stats(conn, e, [(0, 1, "train", "layer0", 50, 200)])
    df = store.query("SELECT neuron_index, trigger_count, seen_samples FROM neuron_stats ORDER BY neuron_index")
    assert df["trigger_count"].tolist() == [0, 50, 6, 9]
    assert df["seen_samples"].tolist() == [100, 200, 100, 100]


def test_snapshot_round_trips_through_parquet_blob(store):
    e = store.create_experiment("a").experiment_id
    store.append_event(e, "dump", {}, expected_last_seq=0)
    frame = pd.DataFrame(_columns(1000)).set_index("sample_id")
    sid = store.write_snapshot(e, "sample_stats", 1, frame)
    back = store.read_snapshot(sid)
    pd.testing.assert_frame_equal(back, frame)
    reg = store.query("SELECT table_name, event_seq, rows FROM snapshots WHERE snapshot_id = :s", {"s": sid})
    assert reg.iloc[0].to_dict() == {"table_name": "sample_stats", "event_seq": 1, "rows": 1000}


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
def test_sample_upserts_are_exact_around_the_rows_per_statement(store, n):
    """Rows go in multi-row statements of SQLITE_ROWS_PER_STATEMENT: none is lost or shifted at the seams."""
    from weightslab.history.stats import SQLITE_ROWS_PER_STATEMENT

    assert SQLITE_ROWS_PER_STATEMENT == 256
    e = store.create_experiment("a").experiment_id
    first, second = _columns(n, 3), _columns(n, 4)
    with store.transaction() as conn:
        upsert_sample_stats(conn, e, "train", first)
    with store.transaction() as conn:
        upsert_sample_stats(conn, e, "train", second)
    df = store.query("SELECT * FROM sample_stats WHERE experiment_id = :e ORDER BY sample_id", {"e": e})
    assert df["sample_id"].tolist() == list(range(n))
    for column in ("prediction_age", "prediction_loss", "prediction", "label"):
        got = df[column].to_numpy(dtype=float, na_value=np.nan)
        np.testing.assert_array_equal(got, np.asarray(second[column], dtype=float), err_msg=column)
    assert df["exposure_amount"].tolist() == second["exposure_amount"].tolist()
    assert df["deny_listed"].astype(bool).tolist() == second["deny_listed"].tolist()


def test_snapshot_writer_reuses_the_blob_of_unchanged_rows_and_rewrites_it_after_a_rollback(store):
    from weightslab.history.snapshots import SnapshotWriter

    e = store.create_experiment("a").experiment_id
    store.append_event(e, "dump", {}, expected_last_seq=0)
    frame = pd.DataFrame(_columns(500)).set_index("sample_id")
    builds: list[int] = []

    def build() -> pd.DataFrame:
        builds.append(1)
        return frame

    writer = SnapshotWriter(store.blobs)
    with store.transaction() as conn:
        first = writer.write(conn, e, "sample_stats", 1, "digest-1", build)
    with store.transaction() as conn:
        second = writer.write(conn, e, "sample_stats", 1, "digest-1", build)
    assert len(builds) == 1  # the same rows: the second snapshot names the first one's blob
    blobs = store.query("SELECT blob_hash FROM snapshots WHERE experiment_id = :e ORDER BY snapshot_id", {"e": e})
    assert blobs["blob_hash"].nunique() == 1 and second == first + 1

    # a transaction that rolls back takes a new blob with it: the writer must not name it later
    other = frame.assign(exposure_amount=frame["exposure_amount"] + 1)
    with pytest.raises(RuntimeError), store.transaction() as conn:
        writer.write(conn, e, "sample_stats", 1, "digest-2", lambda: other)
        raise RuntimeError("rolled back")
    with store.transaction() as conn:
        third = writer.write(conn, e, "sample_stats", 1, "digest-2", lambda: other)
    pd.testing.assert_frame_equal(store.read_snapshot(third), other)
    pd.testing.assert_frame_equal(store.read_snapshot(first), frame)


@pytest.mark.parametrize("n", [1, 255, 256, 257, 700])
def test_neuron_upserts_are_exact_around_the_rows_per_statement(store, n):
    e = store.create_experiment("a").experiment_id
    rows = [(i // 100, i % 100, "train" if i % 3 else "eval", f"layer{i // 100}", i * 7, 1000 + i) for i in range(n)]
    with store.transaction() as conn:
        assert upsert_neuron_stats(conn, e, rows) == n
        assert upsert_neuron_stats(conn, e, [(r[0], r[1], r[2], r[3], r[4] + 1, r[5]) for r in rows[::2]]) \
            == len(rows[::2])
    df = store.query("SELECT layer_index, neuron_index, split, layer_name, trigger_count, seen_samples "
                     "FROM neuron_stats WHERE experiment_id = :e", {"e": e})
    got = sorted(map(tuple, df.itertuples(index=False)))
    want = sorted((r[0], r[1], r[2], r[3], r[4] + (1 if i % 2 == 0 else 0), r[5]) for i, r in enumerate(rows))
    assert got == want
    with pytest.raises(ValueError, match="neuron row"), store.transaction() as conn:
        upsert_neuron_stats(conn, e, [(0, 1, "train", "layer0", 5)])
