"""Opening stores: locations, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from weightslab.errors import (
    ConfigurationError,
    DuplicateExperimentError,
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
