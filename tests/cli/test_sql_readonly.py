"""The SQL tool never changes a store: writes, DDL and multi-statement tricks are refused.

Checked through ``Store.query`` and through ``weightslab sql``, on SQLite and
PostgreSQL, each time proving that every table is exactly as before.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import call_cli
from damage import reader_role
from sqlalchemy import inspect, text

from weightslab.errors import ConfigurationError, StoreUnavailableError
from weightslab.history import sqlfence
from weightslab.history import store as store_module
from weightslab.history.store import Store

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
    "WITH a AS (SELECT 1) INSERT INTO experiments (name, created_at) SELECT 'evil', CURRENT_TIMESTAMP FROM a",
    "WITH a AS MATERIALIZED (DELETE FROM events RETURNING *) SELECT * FROM a",
    "SELECT * INTO evil FROM events",
    "SELECT '\\'; DELETE FROM experiments; --'",
    "SELECT 1 /* /* */ ; DELETE FROM experiments; */",
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


def _as_one_statement(sql: str) -> list:
    """What a fooled splitter would return: the whole text as one statement."""
    from sqlparse import lexer
    from sqlparse.sql import Statement, Token

    return [Statement([Token(ttype, value) for ttype, value in lexer.tokenize(sql)])]


def test_the_database_itself_refuses_two_statements_if_the_check_were_fooled(built, monkeypatch):
    monkeypatch.setattr(sqlfence, "_statements", _as_one_statement)
    before = _fingerprint(built.store)
    for attack in ("SELECT 1; DELETE FROM experiments", "SELECT 1; COMMIT; DELETE FROM experiments"):
        with pytest.raises(ConfigurationError, match="several statements"):
            built.store.query(attack)
    assert _fingerprint(built.store) == before


def test_session_settings_cannot_switch_a_later_query_to_writing(built, monkeypatch):
    before = _fingerprint(built.store)
    if built.store.engine.dialect.name == "postgresql":
        built.store.query("SELECT set_config('default_transaction_read_only', 'off', false)")
        with pytest.raises(ConfigurationError, match="tried to write|read-only"):
            built.store.query("WITH d AS (DELETE FROM experiments RETURNING *) SELECT * FROM d")
    else:
        assert built.store.query("SELECT * FROM pragma_query_only").iloc[0, 0] == 1
        # SQLite has no write that the classifier lets through: skip it, the database must refuse
        monkeypatch.setattr(store_module, "single_read_statement", str.strip)
        with pytest.raises(ConfigurationError, match="tried to write"):
            built.store.query("WITH d AS (SELECT 1) DELETE FROM experiments RETURNING *")
    assert _fingerprint(built.store) == before


@pytest.mark.parametrize("sql", [
    "SELECT ';' AS s -- ; DELETE\n",
    "  /* leading comment; */ SELECT 1 AS one;",
    "SELECT 1 AS one; -- a comment after the semicolon",
    "WITH t AS (SELECT 2 AS n) SELECT n FROM t",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT MAX(n) FROM r",
    "VALUES (1)",
    "SELECT name FROM experiments WHERE name LIKE 'x%'",
    "SELECT \"name\" AS \"a;b\" FROM experiments",
    "SELECT COUNT(*) AS n FROM events WHERE seq IN (" + ", ".join(str(i) for i in range(6000)) + ")",
])
def test_read_queries_with_semicolons_in_strings_and_comments_still_run(built, sql):
    assert len(built.store.query(sql)) == 1


def test_the_database_itself_refuses_writes_if_the_classifier_were_fooled(built, monkeypatch, tmp_path):
    monkeypatch.setattr(store_module, "single_read_statement", str.strip)
    before = _fingerprint(built.store)
    evil = tmp_path / "evil.db"
    for attack in ("DELETE FROM experiments", "UPDATE events SET kind = 'evil'", "DROP TABLE blobs",
                   "CREATE TABLE evil (x INTEGER)", f"ATTACH DATABASE '{evil}' AS evil",
                   "INSERT INTO experiments (name, created_at) VALUES ('evil', CURRENT_TIMESTAMP)"):
        with pytest.raises(ConfigurationError, match="refused|failed"):
            built.store.query(attack)
        assert _fingerprint(built.store) == before, f"{attack!r} changed the store"
    assert not evil.exists()  # a read-only SQLite connection would create it: the authorizer denies ATTACH


def test_bound_parameters_and_bad_sql_give_clear_errors(built):
    assert built.store.query("SELECT seq FROM events WHERE seq = :s", {"s": 3})["seq"].tolist() == [3]
    with pytest.raises(ConfigurationError, match="bind parameter 's'"):
        built.store.query("SELECT seq FROM events WHERE seq = :s")
    with pytest.raises(ConfigurationError, match="the query failed"):
        built.store.query("SELECT no_such_column FROM events")
    with pytest.raises(ConfigurationError, match="empty"):
        built.store.query(" -- nothing\n ; ")


# -- PostgreSQL roles: the fence is not a privilege boundary for a superuser -----------------------


@pytest.fixture
def pg_built(pg_url):
    from store_builder import build_store

    b = build_store(pg_url)
    try:
        yield b
    finally:
        b.store.close()


def test_sql_warns_a_postgres_superuser_and_gives_the_sql_of_a_read_only_role(pg_built, capsys):
    code, out, err = call_cli(capsys, "sql", "SELECT COUNT(*) AS n FROM experiments", "--store", pg_built.target,
                              "--json")
    assert code == 0 and json.loads(out) == [{"n": 1}]
    assert err.startswith("weightslab: warning: the role postgres is a PostgreSQL superuser")
    assert "pg_terminate_backend" in err and "pg_read_file" in err
    for statement in ("CREATE ROLE weightslab_reader LOGIN", "GRANT CONNECT ON DATABASE test TO weightslab_reader",
                      "GRANT USAGE ON SCHEMA", "GRANT SELECT ON ALL TABLES IN SCHEMA"):
        assert statement in err


def test_the_read_only_role_the_warning_suggests_gets_no_warning_and_can_only_read(pg_built, capsys):
    _, _, err = call_cli(capsys, "sql", "SELECT 1 AS one", "--store", pg_built.target)
    suggested = tuple(line.strip().rstrip(";").replace("weightslab_reader", "{role}")
                      for line in err.splitlines() if line.startswith("  "))
    assert suggested and suggested[0].startswith("CREATE ROLE {role} LOGIN")
    with reader_role(pg_built.target, grants=suggested) as url:  # the advice, run as given (a fresh role name)
        code, out, err = call_cli(capsys, "sql", "SELECT name FROM experiments", "--store", url, "--json")
        assert code == 0 and err == "" and json.loads(out) == [{"name": "x0"}]
        code, out, err = call_cli(capsys, "sql", "SELECT pg_read_file('/etc/hostname')", "--store", url)
        assert code == 2 and "permission denied for function pg_read_file" in err
        with Store.open(url) as s, pytest.raises(StoreUnavailableError, match="permission denied"):
            s.create_experiment("evil")
    assert [e.name for e in pg_built.store.list_experiments()] == ["x0"]
