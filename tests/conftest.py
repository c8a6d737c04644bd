"""Shared fixtures: a store on every backend.

``store_target`` is parametrized over SQLite (a fresh directory) and the real
PostgreSQL server (a fresh schema per test, dropped afterwards). Where
PostgreSQL is not running, its tests skip with the reason, except in CI
(``CI`` set), where they fail: CI must exercise both backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

PG_URL = os.environ.get("WEIGHTSLAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_problem() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'weightslab[postgres]')"
    try:
        from sqlalchemy.engine import make_url

        url = make_url(PG_URL)
        with psycopg.connect(
            host=url.host, port=url.port or 5432, user=url.username, dbname=url.database, connect_timeout=3
        ):
            return None
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        return f"PostgreSQL at {PG_URL} is not reachable ({e.__class__.__name__}: {e})"


_PG_PROBLEM: str | None | bool = False


def require_postgres() -> None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _pg_problem()
    if _PG_PROBLEM:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {_PG_PROBLEM}")
        pytest.skip(f"skipping PostgreSQL test: {_PG_PROBLEM}")


class PgSchema:
    """A throw-away PostgreSQL schema; its URL sets search_path to it."""

    def __init__(self) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        self.name = f"wl_test_{uuid.uuid4().hex[:12]}"
        u = make_url(PG_URL)
        self._conninfo = dict(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database)
        with psycopg.connect(**self._conninfo, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{self.name}"')
        self.url = f"{PG_URL}?options={quote(f'-csearch_path={self.name}')}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(**self._conninfo, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL schema (skips/fails as described above)."""
    require_postgres()
    schema = PgSchema()
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_target(request, tmp_path) -> Iterator[str]:
    """A ``store=`` argument for a fresh, empty store on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "store")
        return
    require_postgres()
    schema = PgSchema()
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture
def store(store_target):
    from weightslab.history.store import Store

    s = Store.open(store_target)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def built(store_target):
    """The recorded history of ``tests/cli/store_builder.py`` in a fresh store, on each backend
    (shared by the CLI and the history-tool tests)."""
    from cli.store_builder import build_store

    b = build_store(store_target)
    try:
        yield b
    finally:
        b.store.close()
