"""The read-only tools' direct reader (sqlite3 alone) reads a SQLite store exactly as the Store does, keeps
it unchanged, and leaves everything it cannot read at once to Store.open (URLs, other revisions, damage)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from cli_helpers import run_cli
from store_builder import NAME, build_store

from weightslab.errors import (
    ConfigurationError,
    SchemaVersionError,
    StoreUnavailableError,
    UnknownExperimentError,
)
from weightslab.history.direct import DirectReader, open_reader
from weightslab.history.listings import events_rows, experiments_rows
from weightslab.history.locate import DB_FILENAME
from weightslab.history.log import walk
from weightslab.history.store import Store


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    target = str(tmp_path_factory.mktemp("direct") / "store")
    b = build_store(target)
    b.store.close()
    with Store.open(target) as store:  # a second experiment: listings of several
        build_store_second = store.create_experiment("second", config={"batch_size": 8})
        assert build_store_second.name == "second"
    return target


def _snapshot(path: str) -> bytes:
    with open(f"{path}/{DB_FILENAME}", "rb") as f:
        return f.read()


def test_it_reads_what_the_store_reads_row_for_row(built):
    reader = DirectReader.open(built)
    assert reader is not None
    with reader, Store.open(built, create=False, read_only=True) as store:
        assert reader.list_experiments() == store.list_experiments()
        assert reader.get_experiment(NAME) == store.get_experiment(NAME)
        eid = store.get_experiment(NAME).experiment_id
        assert reader.events(eid) == store.events(eid)
        assert reader.events(eid, 4, 9) == store.events(eid, 4, 9)
        assert [e.created_at.tzinfo is not None for e in reader.events(eid)] == [True] * 16
        assert experiments_rows(reader) == experiments_rows(store)
        assert events_rows(reader, NAME, 2, 15) == events_rows(store, NAME, 2, 15)
        a, b = walk(reader, NAME), walk(store, NAME)
        assert [(e.seq, e.event, e.record) for e in a] == [(e.seq, e.event, e.record) for e in b]
        for sql, params in [("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind ORDER BY kind", {}),
                            ("SELECT * FROM sample_stats WHERE experiment_id = :e ORDER BY sample_id", {"e": eid}),
                            ("WITH x AS (SELECT seq FROM events) SELECT max(seq) AS top FROM x", {})]:
            assert reader.query_rows(sql, params) == store.query_rows(sql, params)


def test_an_unknown_name_lists_the_experiments_as_the_store_does(built):
    with DirectReader.open(built) as reader, Store.open(built, read_only=True) as store:
        with pytest.raises(UnknownExperimentError) as direct:
            reader.get_experiment("nope")
        with pytest.raises(UnknownExperimentError) as stored:
            store.get_experiment("nope")
    assert str(direct.value) == str(stored.value) and "'x0', 'second'" in str(direct.value)


@pytest.mark.parametrize("sql, says", [
    ("DELETE FROM events", "SELECT, WITH"),
    ("SELECT 1; DELETE FROM events", "holds 2 statements"),
    ("ATTACH DATABASE 'elsewhere.db' AS other", "refused"),
    ("SELECT * FROM events WHERE seq = :missing", "missing"),
    ("SELECT * FROM no_such_table", "no such table"),
])
def test_its_query_is_fenced_and_leaves_the_store_unchanged(built, sql, says):
    before = _snapshot(built)
    with DirectReader.open(built) as reader:
        with pytest.raises(ConfigurationError, match=says):
            reader.query_rows(sql, {})
        assert reader.query_rows("SELECT count(*) AS n FROM events", {}).rows == [(16,)]  # still usable
    assert _snapshot(built) == before


@pytest.mark.parametrize("sql", ["DELETE FROM events", "INSERT INTO experiments (name) VALUES ('x')",
                                 "SELECT 1; DELETE FROM events", "ATTACH DATABASE 'other.db' AS other"])
def test_a_write_the_classifier_let_through_is_refused_by_the_connection(built, monkeypatch, sql):
    """The database is the guarantee: with the text classifier out of the way, the read-only connection
    (``mode=ro``, ``query_only``, one statement a call, ATTACH denied) still refuses, and nothing changes."""
    import weightslab.history.sqlfence as sqlfence

    monkeypatch.setattr(sqlfence, "single_read_statement", lambda text: text)
    before = _snapshot(built)
    with DirectReader.open(built) as reader, pytest.raises(ConfigurationError, match="refused"):
        reader.query_rows(sql, {})
    assert _snapshot(built) == before


def test_what_it_cannot_read_at_once_goes_to_store_open(built, tmp_path):
    # a URL: the Store (SQLAlchemy) reads it
    opened = open_reader(f"sqlite:///{built}/{DB_FILENAME}")
    assert isinstance(opened, Store)
    opened.close()
    # no store there: the Store's error, nothing created
    with pytest.raises(StoreUnavailableError, match="no store at"):
        open_reader(str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()
    # another schema revision: the Store's upgrade hint
    older = tmp_path / "older"
    shutil.copytree(built, older)
    with sqlite3.connect(older / DB_FILENAME) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0003'")
    assert DirectReader.open(str(older)) is None
    with pytest.raises(SchemaVersionError, match="weightslab db upgrade"):
        open_reader(str(older))


@pytest.mark.postgres
def test_a_postgresql_store_is_read_by_the_store(pg_url):
    Store.open(pg_url).close()
    with open_reader(pg_url) as server:
        assert isinstance(server, Store) and server.read_only and server.list_experiments() == []


def test_a_damaged_file_is_a_store_error_not_a_crash(built, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(built, damaged)
    (damaged / DB_FILENAME).write_bytes(b"not a database" * 100)
    for f in damaged.glob(f"{DB_FILENAME}-*"):
        f.unlink()
    assert DirectReader.open(str(damaged)) is None
    out = run_cli("events", NAME, "--store", str(damaged))
    assert out.returncode != 0 and "weightslab: error:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [["experiments"], ["events", NAME], ["lineage", NAME],
                                     ["sql", "SELECT kind FROM events"]])
def test_the_listing_commands_on_a_sqlite_store_load_no_sqlalchemy(built, command):
    probe = ("import json, sys\nfrom weightslab.cli import main\ncode = main(json.loads(sys.argv[1]))\n"
             "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'psycopg'})]),"
             " file=sys.stderr)\n")
    out = run_cli(json.dumps([*command, "--store", built]), code=probe)
    assert json.loads(out.stderr.strip().splitlines()[-1]) == [0, []], out.stderr
