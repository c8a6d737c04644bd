"""Opening stores: locations, creating or not, read-only, and one clear line for every driver error."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, text

from weightslab.errors import (
    ConfigurationError,
    DuplicateExperimentError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    UnknownExperimentError,
)
from weightslab.history.locate import DB_FILENAME, resolve_store
from weightslab.history.store import Store


def test_directory_store_holds_sqlite_file_in_wal_mode(tmp_path):
    with Store.open(tmp_path / "s") as s:
        assert (tmp_path / "s" / DB_FILENAME).exists()
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_env_var_names_the_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSLAB_STORE", str(tmp_path / "envstore"))
    assert resolve_store(None).root == (tmp_path / "envstore").resolve()


def test_default_store_is_dot_store(tmp_path, monkeypatch):
    monkeypatch.delenv("WEIGHTSLAB_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_store(None).root == (tmp_path / "store").resolve()


@pytest.mark.parametrize("bad", ["postgresql+psycopg://user@host:notaport/db", "mysql://x@y/z",
                                 "sqlite:///:memory:"])
def test_malformed_or_unsupported_url_is_refused(bad):
    with pytest.raises(StoreUnavailableError):
        Store.open(bad)


def test_store_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreUnavailableError, match="is a file"):
        Store.open(f)


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(StoreUnavailableError, match="cannot be reached"):
        Store.open("postgresql+psycopg://nobody@127.0.0.1:1/nowhere")


def test_unknown_experiment_lists_existing_names(store):
    store.create_experiment("alpha")
    with pytest.raises(UnknownExperimentError, match="'alpha'"):
        store.get_experiment("beta")


def test_duplicate_experiment_name_is_refused_and_first_kept(store):
    first = store.create_experiment("alpha", config={"lr": 0.01})
    with pytest.raises(DuplicateExperimentError, match="already exists"):
        store.create_experiment("alpha")
    assert [e.experiment_id for e in store.list_experiments()] == [first.experiment_id]
    assert store.get_experiment("alpha").config == {"lr": 0.01}


@pytest.mark.parametrize("bad", ["", "   ", 3, "x" * 201])
def test_bad_experiment_name_is_refused(store, bad):
    with pytest.raises(ConfigurationError):
        store.create_experiment(bad)
    assert store.list_experiments() == []


def test_query_is_read_only(store):
    store.create_experiment("alpha")
    with pytest.raises(Exception) as info:
        store.query("DELETE FROM experiments")
    assert "read" in str(info.value).lower() or "readonly" in str(info.value).lower()
    assert len(store.list_experiments()) == 1


# -- opening without creating, opening read-only ----------------------------------------------


def _tables(target: str) -> list[str]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(target)
    try:
        with engine.connect() as conn:
            return inspect(conn).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("read_only", [False, True])
def test_open_without_create_refuses_a_missing_store_and_creates_nothing(store_target, read_only):
    with pytest.raises(StoreUnavailableError, match="no store at|no WeightsLab store") as info:
        Store.open(store_target, create=False, read_only=read_only)
    assert "WEIGHTSLAB_STORE" in str(info.value)
    if "://" in store_target:
        assert _tables(store_target) == []
    else:
        assert not Path(store_target).exists()


def test_open_without_create_opens_an_existing_store_for_writing(store_target):
    Store.open(store_target).close()
    with Store.open(store_target, create=False) as s:
        s.create_experiment("alpha")
        assert [e.name for e in s.list_experiments()] == ["alpha"]


def test_a_read_only_store_reads_and_refuses_every_write(store_target):
    with Store.open(store_target) as s:
        s.create_experiment("alpha")
    with Store.open(store_target, create=False, read_only=True) as s:
        assert s.read_only and [e.name for e in s.list_experiments()] == ["alpha"]
        assert s.query("SELECT name FROM experiments")["name"].tolist() == ["alpha"]
        with pytest.raises(StoreError, match="opened read-only.*Store.open\\(store\\) to record"):
            s.create_experiment("beta")
        with pytest.raises(StoreError, match="opened read-only"), s.transaction():
            pass
        # underneath, the connection itself cannot write (not only the Python API refusing)
        with pytest.raises(StoreError, match="read-only|readonly"), s.reading() as conn:
            conn.execute(text("DELETE FROM experiments"))
    with Store.open(store_target) as s:
        assert [e.name for e in s.list_experiments()] == ["alpha"]


def test_a_read_only_open_leaves_the_sqlite_file_and_the_blob_tmp_folder_alone(tmp_path):
    with Store.open(tmp_path / "s") as s:
        s.create_experiment("alpha")
    db = tmp_path / "s" / DB_FILENAME
    leftover = tmp_path / "s" / "blobs" / "tmp" / "killed-writer.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a blob")
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    with Store.open(tmp_path / "s", read_only=True) as s:
        assert [e.name for e in s.list_experiments()] == ["alpha"]
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert leftover.exists()  # only a store opened for writing sweeps what killed writers left
    Store.open(tmp_path / "s").close()
    assert not leftover.exists()


def test_a_read_only_open_refuses_another_schema_version_without_migrating(store_target):
    with Store.open(store_target) as s, s.transaction() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    with pytest.raises(SchemaVersionError, match="older than this WeightsLab.*weightslab db upgrade"):
        Store.open(store_target, read_only=True)
    with pytest.raises(SchemaVersionError, match="older"):
        Store.open(store_target, create=False)
    engine = create_engine(store_target if "://" in store_target else f"sqlite:///{store_target}/{DB_FILENAME}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    finally:
        engine.dispose()


def _unprivileged() -> list[str]:
    """A command prefix that runs a process without root's right to ignore file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop the right to ignore file permissions")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


READ_BACK = """
import sys
from weightslab.errors import WeightsLabError
from weightslab.history.store import Store
try:
    with Store.open(sys.argv[1], read_only=True) as s:
        print([e.name for e in s.list_experiments()], len(s.query("SELECT * FROM experiments")))
except WeightsLabError as e:
    print(type(e).__name__, e)
"""


@pytest.fixture
def shared_dir():
    """A directory another user can reach (pytest's own temporary directories are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="wl-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(path)


def _read_only_tree(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def test_a_store_in_a_read_only_directory_opens_read_only(shared_dir):
    with Store.open(shared_dir / "s") as s:
        s.create_experiment("alpha")
    assert sorted(p.name for p in (shared_dir / "s").iterdir()) == ["weightslab.db"]  # WAL folded in at close
    _read_only_tree(shared_dir / "s")
    out = subprocess.run([*_unprivileged(), sys.executable, "-c", READ_BACK, str(shared_dir / "s")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "['alpha'] 1", out.stdout + out.stderr
    assert sorted(p.name for p in (shared_dir / "s").iterdir()) == ["weightslab.db"]


WRITE = """
import sys
from weightslab.errors import WeightsLabError
from weightslab.history.store import Store
try:
    with Store.open(sys.argv[1]) as s:
        s.create_experiment("beta")
except WeightsLabError as e:
    print(type(e).__name__, e)
"""


def test_writing_a_store_this_user_may_not_write_says_so_and_to_open_it_read_only(shared_dir):
    Store.open(shared_dir / "s").close()
    _read_only_tree(shared_dir / "s")
    out = subprocess.run([*_unprivileged(), sys.executable, "-c", WRITE, str(shared_dir / "s")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.startswith(f"StoreUnavailableError store {shared_dir / 's'} cannot be written: it is "
                                 "read-only here (attempt to write a readonly database)"), out.stdout + out.stderr
    assert "Store.open(store, read_only=True)" in out.stdout and out.stdout.count("\n") == 1


def test_a_read_only_directory_with_unfolded_wal_transactions_is_refused_with_what_to_do(shared_dir):
    with Store.open(shared_dir / "s") as s:
        s.create_experiment("alpha")
    db = shared_dir / "s" / DB_FILENAME
    # a writer killed after committing to the WAL: its -wal holds the transaction, its -shm is gone
    code = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint = 0');"
            "c.execute(\"UPDATE experiments SET name = 'beta'\"); c.commit(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    Path(f"{db}-shm").unlink()
    assert Path(f"{db}-wal").stat().st_size > 0
    _read_only_tree(shared_dir / "s")
    out = subprocess.run([*_unprivileged(), sys.executable, "-c", READ_BACK, str(shared_dir / "s")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.startswith("StoreUnavailableError") and "holds transactions" in out.stdout, out.stdout + out.stderr


# -- driver errors, translated into one line that says what to do ------------------------------


def _one_clear_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "[SQL:" not in message and "Background on this error" not in message, message
    assert error.__cause__ is not None  # the driver's own error stays attached
    return message


def test_a_damaged_sqlite_page_is_reported_as_damage_with_what_to_do(tmp_path):
    from cli.damage import overwrite_page

    with Store.open(tmp_path / "s") as s:
        experiment_id = s.create_experiment("alpha").experiment_id
        s.append_event(experiment_id, "train", {"steps": 1}, expected_last_seq=0)
    overwrite_page(tmp_path / "s" / DB_FILENAME, "events")
    with Store.open(tmp_path / "s", read_only=True) as s, pytest.raises(StoreError) as info:
        s.events(experiment_id)
    message = _one_clear_line(info.value)
    assert "is damaged (database disk image is malformed)" in message and "backup" in message
    assert "weightslab audit" in message
    assert isinstance(info.value.__cause__.orig, sqlite3.DatabaseError)


def test_a_file_that_is_not_a_database_is_reported_as_damage(tmp_path):
    from cli.damage import overwrite_page

    Store.open(tmp_path / "s").close()
    overwrite_page(tmp_path / "s" / DB_FILENAME, "sqlite_master")  # page 1: the header and the schema
    for options in ({}, {"read_only": True}):
        with pytest.raises(StoreError, match="is damaged \\(file is not a database\\).*backup") as info:
            Store.open(tmp_path / "s", **options)
        _one_clear_line(info.value)


def test_a_role_that_may_only_read_is_told_it_cannot_write_and_to_open_read_only(pg_url):
    from cli.damage import reader_role

    Store.open(pg_url).close()
    with reader_role(pg_url) as url:
        with Store.open(url) as s, pytest.raises(StoreUnavailableError) as info:
            s.create_experiment("alpha")
        message = _one_clear_line(info.value)
        assert "permission denied for table experiments" in message
        assert "read_only=True" in message and "INSERT" in message
        with Store.open(url, create=False, read_only=True) as s:
            assert s.list_experiments() == []


def test_a_lock_held_too_long_is_reported_as_busy(pg_url):
    import psycopg
    from sqlalchemy.engine import make_url

    Store.open(pg_url).close()
    u = make_url(pg_url)
    impatient = u.update_query_dict({"options": u.query["options"] + " -clock_timeout=200"}).render_as_string(False)
    schema = u.query["options"].split("search_path=")[1]
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database) as holder:
        holder.execute(f'LOCK TABLE "{schema}".experiments IN ACCESS EXCLUSIVE MODE')
        with Store.open(impatient) as s, pytest.raises(StoreError) as info:
            s.create_experiment("alpha")
        holder.rollback()
    message = _one_clear_line(info.value)
    assert "is busy" in message and "lock timeout" in message and "retry" in message


def test_a_broken_constraint_is_reported_without_the_statement(store):
    store.create_experiment("alpha")
    with pytest.raises(StoreError) as info, store.transaction() as conn:
        conn.execute(text("INSERT INTO experiments (name, created_at) VALUES ('alpha', CURRENT_TIMESTAMP)"))
    message = _one_clear_line(info.value)
    assert "breaks one of its constraints" in message and "nothing was written" in message
    assert "INSERT" not in message
    assert isinstance(info.value.__cause__, sqlalchemy.exc.IntegrityError)


def test_a_full_sqlite_database_is_reported_as_a_full_disk(tmp_path):
    with Store.open(tmp_path / "s") as s:
        with pytest.raises(StoreError) as info, s.transaction() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")  # SQLite's own limit: SQLITE_FULL past it
            conn.execute(text("INSERT INTO blobs (hash, size, created_at) VALUES ('x', 1048576, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO blob_contents (hash, data) VALUES ('x', :d)"), {"d": b"\0" * 2**20})
        s.engine.dispose()  # the connection keeps its page limit: drop it
        assert s.list_experiments() == []
    message = _one_clear_line(info.value)
    assert "the disk is full (database or disk is full)" in message and "free space" in message


def test_a_store_dropped_without_close_closes_its_connections(store_target):
    """A user who forgets ``close()`` gets no ResourceWarning (PostgreSQL) when the store is collected:
    both engines (the writer's and the read-only one of ``query``) are disposed."""
    import gc
    import warnings

    store = Store.open(store_target)
    store.list_experiments()
    assert len(store.query("SELECT 1 AS one")) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del store
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
