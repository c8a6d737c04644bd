"""The SQL tool never changes a store: writes, DDL and multi-statement tricks are refused.

Checked through ``Store.query`` and through ``weightslab sql``, on SQLite and
PostgreSQL, each time proving that every table is exactly as before.
"""

from __future__ import annotations

import pytest
from cli_helpers import call_cli
from sqlalchemy import inspect, text

from weightslab.errors import ConfigurationError
from weightslab.history import sqlfence

TABLES = ("experiments", "events", "checkpoints", "blobs", "snapshots", "sample_stats", "neuron_stats")

ATTACKS = [
    "INSERT INTO experiments (name, created_at) VALUES ('evil', CURRENT_TIMESTAMP)",
    "UPDATE events SET kind = 'evil'",
    "DELETE FROM experiments",
    "DELETE FROM sample_stats RETURNING *",
    "DROP TABLE blobs",
    "CREATE TABLE evil (x INTEGER)",
    "ALTER TABLE events ADD COLUMN evil INTEGER",
    "SELECT 1; DELETE FROM events",
    "COMMIT; DELETE FROM events",
    "SELECT 1; COMMIT; DROP TABLE events",
    "select 1;\nupdate events set kind = 'evil'",
    "/* hello */ DELETE FROM events",
    "(DELETE FROM events)",
    "WITH d AS (DELETE FROM snapshots RETURNING *) SELECT * FROM d",
    "WITH x AS (SELECT 1) DELETE FROM neuron_stats",
    "SELECT E'\\''; DELETE FROM experiments; --'",
    "SELECT $$;$$; DELETE FROM experiments",
    "PRAGMA query_only = OFF",
    "ATTACH DATABASE 'evil.db' AS evil",
    "VACUUM",
    "ANALYZE",
    "REINDEX",
    "SET default_transaction_read_only = off",
    "BEGIN; DELETE FROM events; COMMIT",
    "EXPLAIN ANALYZE DELETE FROM experiments",
    "TRUNCATE sample_stats",
    "GRANT ALL ON events TO PUBLIC",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/weightslab-evil'",
]


def _fingerprint(store) -> dict:
    with store.reading() as conn:
        return {
            "tables": sorted(inspect(conn).get_table_names()),
            "counts": {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES},
            "events": conn.execute(text("SELECT seq, kind, hash FROM events ORDER BY experiment_id, seq")).all(),
            "columns": [c["name"] for c in inspect(conn).get_columns("events")],
        }


def test_store_query_refuses_every_write_and_changes_nothing(built):
    before = _fingerprint(built.store)
    for attack in ATTACKS:
        with pytest.raises(ConfigurationError, match="refused|failed|cannot run"):
            built.store.query(attack)
        assert _fingerprint(built.store) == before, f"{attack!r} changed the store"


def test_cli_sql_refuses_writes_with_a_clear_message(built, capsys):
    before = _fingerprint(built.store)
    for attack in ("DELETE FROM experiments", "SELECT 1; DROP TABLE events", "COMMIT; DELETE FROM events"):
        code, out, err = call_cli(capsys, "sql", attack, "--store", built.target)
        assert code == 2 and out == ""
        assert err.startswith("weightslab: error: refused") and "read-only" in err
    assert _fingerprint(built.store) == before


def test_the_database_itself_refuses_two_statements_if_the_check_were_fooled(built, monkeypatch):
    monkeypatch.setattr(sqlfence, "_split_sql", lambda sql, postgres: [sql])
    before = _fingerprint(built.store)
    for attack in ("SELECT 1; DELETE FROM experiments", "SELECT 1; COMMIT; DELETE FROM experiments"):
        with pytest.raises(ConfigurationError, match="several statements"):
            built.store.query(attack)
    assert _fingerprint(built.store) == before


def test_session_settings_cannot_switch_a_later_query_to_writing(built):
    before = _fingerprint(built.store)
    if built.store.engine.dialect.name == "postgresql":
        built.store.query("SELECT set_config('default_transaction_read_only', 'off', false)")
        with pytest.raises(ConfigurationError, match="tried to write|read-only"):
            built.store.query("WITH d AS (DELETE FROM experiments RETURNING *) SELECT * FROM d")
    else:
        assert built.store.query("SELECT * FROM pragma_query_only").iloc[0, 0] == 1
        with pytest.raises(ConfigurationError, match="tried to write"):
            built.store.query("WITH d AS (SELECT 1) DELETE FROM experiments RETURNING *")
    assert _fingerprint(built.store) == before


@pytest.mark.parametrize("sql", [
    "SELECT ';' AS s -- ; DELETE\n",
    "  /* leading comment; */ SELECT 1 AS one;",
    "WITH t AS (SELECT 2 AS n) SELECT n FROM t",
    "VALUES (1)",
    "SELECT name FROM experiments WHERE name LIKE 'x%'",
])
def test_read_queries_with_semicolons_in_strings_and_comments_still_run(built, sql):
    assert len(built.store.query(sql)) == 1


def test_bound_parameters_and_bad_sql_give_clear_errors(built):
    assert built.store.query("SELECT seq FROM events WHERE seq = :s", {"s": 3})["seq"].tolist() == [3]
    with pytest.raises(ConfigurationError, match="bind parameter 's'"):
        built.store.query("SELECT seq FROM events WHERE seq = :s")
    with pytest.raises(ConfigurationError, match="the query failed"):
        built.store.query("SELECT no_such_column FROM events")
    with pytest.raises(ConfigurationError, match="empty"):
        built.store.query(" -- nothing\n ; ")
