"""``weightslab db current`` / ``db upgrade``: integrity first, a missing or damaged store is exit 2 and unchanged."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from cli_helpers import call_cli, run_cli
from damage import overstate_first_cell, overwrite_page
from sqlalchemy import text

from weightslab.history import migrate
from weightslab.history.locate import DB_FILENAME
from weightslab.history.store import Store


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_db_current_reports_the_head_revision_on_both_backends(store_target, capsys):
    Store.open(store_target).close()
    code, out, err = call_cli(capsys, "db", "current", "--store", store_target)
    assert code == 0, err
    assert f"schema {migrate.head_revision()} (up to date)" in out


def test_db_current_exits_1_on_an_old_schema_and_db_upgrade_brings_it_to_head(store_target, capsys):
    from alembic import command

    from weightslab.history.locate import make_engine, resolve_store

    engine = make_engine(resolve_store(store_target))
    with engine.begin() as conn:  # a real store at revision 0003
        command.upgrade(migrate.alembic_config(conn), "0003")
    engine.dispose()
    code, out, _ = call_cli(capsys, "db", "current", "--store", store_target)
    assert code == 1 and "schema 0003" in out
    code, out, err = call_cli(capsys, "db", "upgrade", "--store", store_target)
    assert code == 0 and f"-> {migrate.head_revision()}" in out, err


def test_db_current_refuses_a_missing_store_and_creates_nothing(tmp_path, capsys):
    code, out, err = call_cli(capsys, "db", "current", "--store", str(tmp_path / "nowhere"))
    assert code == 2 and out == "" and "no store at" in err
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def damaged(tmp_path):
    """A SQLite store at the previous schema revision whose events table has a page overwritten."""
    with Store.open(tmp_path / "s") as s:
        exp = s.create_experiment("x0")
        s.append_event(exp.experiment_id, "train", {"steps": 1}, expected_last_seq=0)
        with s.transaction() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    db = tmp_path / "s" / DB_FILENAME
    overwrite_page(db, "events")
    return tmp_path / "s", db


@pytest.mark.parametrize("action", ["upgrade", "current"])
def test_db_commands_refuse_a_damaged_sqlite_file_with_exit_2_and_change_nothing(damaged, action, capsys):
    store, db = damaged
    before = _digest(db)
    code, out, err = call_cli(capsys, "db", action, "--store", str(store))
    assert code == 2 and out == ""
    assert err.startswith(f"weightslab: error: store {store} is damaged") and err.count("\n") == 1
    assert "backup" in err and "Traceback" not in err
    assert _digest(db) == before
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)  # not migrated
    finally:
        conn.close()


def test_db_upgrade_reports_what_quick_check_found(tmp_path):
    with Store.open(tmp_path / "s") as s:
        s.create_experiment("x0", config={"note": "a row at the end of the experiments page"})
    db = tmp_path / "s" / DB_FILENAME
    overstate_first_cell(db, "experiments")
    conn = sqlite3.connect(db)
    try:
        problems = [" ".join(p.split()) for (p,) in conn.execute("PRAGMA quick_check")]
    finally:
        conn.close()
    assert problems != ["ok"]  # quick_check answers with what it found, it does not raise
    out = run_cli("db", "upgrade", "--store", str(tmp_path / "s"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"is damaged: SQLite's quick_check found {len(problems)} problem(s), the first: {problems[0]}" \
        in out.stderr and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr
