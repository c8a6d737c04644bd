"""Export: an experiment's events, statistics and sample history as Parquet; query results as files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli.store_builder import NAME, clone_experiment

from weightslab.errors import ConfigurationError, UnknownExperimentError
from weightslab.history.export import export_experiment, write_table


def test_export_writes_events_stats_and_the_whole_sample_history(built, tmp_path):
    files = export_experiment(built.store, NAME, tmp_path / "out")
    assert [(f.table, f.path.name, f.rows) for f in files] == [
        ("events", "events.parquet", 16), ("sample_stats", "sample_stats.parquet", 20),
        ("neuron_stats", "neuron_stats.parquet", 2), ("sample_history", "sample_history.parquet", 16)]
    events = pd.read_parquet(tmp_path / "out" / "events.parquet")
    assert events["seq"].tolist() == list(range(1, 17))
    assert {"created_at", "kind", "summary", "actor", "code_version", "hash", "prev_hash"} <= set(events.columns)
    assert json.loads(events["payload"][5])["args"]["ids"] == [1, 2, 3]
    stats = pd.read_parquet(tmp_path / "out" / "sample_stats.parquet")
    assert stats["sample_id"].tolist() == list(range(20))
    assert stats["deny_listed"].tolist() == [i in {1, 3, 10, 11, 12, 13, 14} for i in range(20)]
    assert stats["prediction_age"].isna().tolist() == [False] * 18 + [True] * 2  # never-seen samples: null
    assert str(stats["prediction_age"].dtype) == "Int64"
    neurons = pd.read_parquet(tmp_path / "out" / "neuron_stats.parquet")
    assert neurons[["layer_index", "trigger_count"]].values.tolist() == [[0, 7], [1, 3]]
    history = pd.read_parquet(tmp_path / "out" / "sample_history.parquet")
    assert history["snapshot_seq"].tolist() == [4] * 4 + [7] * 4 + [11] * 4 + [15] * 4
    assert history["prediction_loss"].round(3).tolist()[::4] == [0.1, 0.2, 0.3, 0.4]


def test_exporting_again_replaces_the_files(built, tmp_path):
    export_experiment(built.store, NAME, tmp_path / "out")
    files = export_experiment(built.store, NAME, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.path.name for f in files)


def test_an_experiment_without_history_exports_empty_tables(built, tmp_path):
    clone_experiment(built.store, "fresh")
    files = {f.table: f.rows for f in export_experiment(built.store, "fresh", tmp_path / "out")}
    assert files == {"events": 1, "sample_stats": 0, "neuron_stats": 0, "sample_history": 0}
    assert list(pd.read_parquet(tmp_path / "out" / "sample_history.parquet").columns) == ["snapshot_seq"]


def test_an_unknown_experiment_writes_nothing(built, tmp_path):
    with pytest.raises(UnknownExperimentError):
        export_experiment(built.store, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_table_writes_csv_and_parquet_with_json_cells(tmp_path):
    frame = pd.DataFrame({"n": [1, 2], "payload": [{"a": 1}, {"b": [2]}]})
    assert pd.read_csv(write_table(frame, tmp_path / "t.csv"))["payload"].tolist() == ['{"a":1}', '{"b":[2]}']
    assert pd.read_parquet(write_table(frame, tmp_path / "t.parquet"))["n"].tolist() == [1, 2]
    with pytest.raises(ConfigurationError, match=".csv or .parquet"):
        write_table(frame, tmp_path / "t.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.parquet"]
