"""One schema: models and migrations agree; other schema versions are refused."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from weightslab.errors import SchemaVersionError
from weightslab.history import migrate
from weightslab.history.schema import Base
from weightslab.history.store import Store

PUBLIC_COLUMNS = {
    "experiments": {"experiment_id", "name", "created_at"},
    "events": {"experiment_id", "seq", "kind", "payload", "created_at", "hash", "prev_hash"},
    "sample_stats": {"experiment_id", "split", "sample_id", "prediction_age", "prediction_loss",
                     "exposure_amount", "deny_listed", "prediction", "label"},
    "neuron_stats": {"experiment_id", "layer_index", "neuron_index", "split", "trigger_count", "seen_samples"},
    "checkpoints": {"experiment_id", "checkpoint_id", "parent_id", "event_seq", "manifest_hash"},
    "blobs": {"hash", "size"},
}


def test_models_and_migrations_never_drift(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_empty_database_is_brought_to_head(store):
    with store.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_public_sql_surface_has_the_documented_columns(store):
    from sqlalchemy import inspect

    insp = inspect(store.engine)
    for table, cols in PUBLIC_COLUMNS.items():
        assert cols <= {c["name"] for c in insp.get_columns(table)}, table


def _stamp(store, revision):
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def test_newer_schema_is_refused_with_upgrade_the_package_advice(store_target):
    s = Store.open(store_target)
    _stamp(s, "9999_from_the_future")
    s.close()
    with pytest.raises(SchemaVersionError, match="newer version.*pip install -U weightslab"):
        Store.open(store_target)


def test_older_schema_is_refused_naming_the_upgrade_command(store_target, monkeypatch):
    s = Store.open(store_target)
    s.close()
    # Pretend this code knows a newer head: the store is then one revision behind.
    monkeypatch.setattr(migrate, "head_revision", lambda: "0002_future")
    with pytest.raises(SchemaVersionError, match="weightslab db upgrade --store"):
        Store.open(store_target)


def test_reopening_at_head_changes_nothing(store_target):
    Store.open(store_target).close()
    with Store.open(store_target) as s, s.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_a_store_at_revision_0001_is_refused_then_upgraded_by_the_cli(store_target):
    """A real older store: created at 0001, refused as older, then `weightslab db upgrade` brings it to head."""
    import subprocess
    import sys

    from alembic import command
    from sqlalchemy import inspect

    from weightslab.history.locate import make_engine, resolve_store

    engine = make_engine(resolve_store(store_target))
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0001")
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="older than this WeightsLab"):
        Store.open(store_target)
    out = subprocess.run([sys.executable, "-m", "weightslab.cli", "db", "upgrade", "--store", store_target],
                         capture_output=True, text=True, check=True).stdout
    assert "0001 -> " + migrate.head_revision() in out
    with Store.open(store_target) as s:
        indexes = {ix["name"] for ix in inspect(s.engine).get_indexes("sample_stats")}
        assert "ix_sample_stats_loss" not in indexes


def test_sample_stats_rows_live_in_the_key_order_tree_on_sqlite(store):
    from sqlalchemy import inspect

    options = inspect(store.engine).get_table_options("sample_stats")
    if store.engine.dialect.name == "sqlite":
        assert options.get("sqlite_with_rowid") is False  # WITHOUT ROWID (revision 0003)
    else:
        assert "sqlite_with_rowid" not in options


def test_upgrading_a_0002_store_keeps_its_sample_rows(store_target):
    from alembic import command
    from sqlalchemy import inspect

    from weightslab.history.locate import make_engine, resolve_store

    engine = make_engine(resolve_store(store_target))
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0002")
        conn.execute(text("INSERT INTO experiments (name, created_at) VALUES ('old', '2026-01-01 00:00:00+00')"))
        conn.execute(text("INSERT INTO sample_stats VALUES (1, 'train', 7, 640, 0.25, 2, false, 3, 4), "
                          "(1, 'eval', 7, 640, NULL, 1, true, NULL, 5)"))
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "head")
        rows = conn.execute(text("SELECT split, sample_id, prediction_age, prediction_loss, exposure_amount, "
                                 "deny_listed, prediction, label FROM sample_stats ORDER BY split")).fetchall()
        options = inspect(conn).get_table_options("sample_stats")
    engine.dispose()
    assert [tuple(r) for r in rows] == [("eval", 7, 640, None, 1, True, None, 5),
                                        ("train", 7, 640, 0.25, 2, False, 3, 4)]
    if engine.dialect.name == "sqlite":
        assert options.get("sqlite_with_rowid") is False
    with Store.open(store_target) as s:
        assert s.query("SELECT COUNT(*) AS n FROM sample_stats")["n"].iloc[0] == 2


def test_upgrading_a_0003_store_anchors_the_head_of_every_existing_log(store_target):
    """Revision 0004 gives each experiment the head of the log it already has: the log then verifies, and
    deleting its newest event afterwards is caught."""
    from alembic import command

    from weightslab.history import eventlog
    from weightslab.history.locate import make_engine, resolve_store

    engine = make_engine(resolve_store(store_target))
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0003")
        conn.execute(text("INSERT INTO experiments (name, created_at) VALUES ('old', '2026-01-01 00:00:00+00'), "
                          "('empty', '2026-01-01 00:00:00+00')"))
    with engine.begin() as conn:  # a log written by the 0003 code: events without a head
        conn.execute(text("ALTER TABLE experiments ADD COLUMN head_seq INTEGER DEFAULT 0"))
        conn.execute(text("ALTER TABLE experiments ADD COLUMN head_hash VARCHAR(64)"))
        for seq in (1, 2, 3):
            eventlog.append_event(conn, 1, "train", {"steps": seq, "age_before": 0, "age_after": seq},
                                  expected_last_seq=seq - 1)
        conn.execute(text("ALTER TABLE experiments DROP COLUMN head_hash"))
        conn.execute(text("ALTER TABLE experiments DROP COLUMN head_seq"))
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "head")
    engine.dispose()
    with Store.open(store_target) as s:
        report = s.verify_chain(1)
        assert report.ok and report.head_seq == 3
        assert report.head_hash == s.events(1)[-1].hash
        assert s.verify_chain(2).ok and s.verify_chain(2).head_seq == 0
