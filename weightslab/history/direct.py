"""The read-only tools' direct reader: a SQLite store read through Python's ``sqlite3`` alone.

``weightslab experiments``, ``events``, ``lineage`` and ``sql`` on the default
store (a directory) need a handful of plain queries. Importing SQLAlchemy and
the schema's models costs more than the rest of such a call (~0.3 s on a quiet
machine), so :func:`open_reader` opens the file directly, read-only, when it
can: a directory store (or ``$WEIGHTSLAB_STORE`` / ``./store``) whose database
is at this code's schema revision. Everything else (a URL, a PostgreSQL
server, a store at another revision, a missing store) goes through
:meth:`weightslab.history.store.Store.open`, which gives the usual errors.

The reader offers the part of the :class:`~weightslab.history.store.Store`
API those commands use, with the same rows: the log walker
(:func:`weightslab.history.log.walk`) reads it like a store.
``tests/history/test_direct.py`` holds both equal on the same stores. Its SQL
is constant text over the public tables (SPEC §4); the query of ``weightslab
sql`` runs behind the same fence as :meth:`Store.query_rows` (a read-only
connection, ``PRAGMA query_only``, one statement, ATTACH denied).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightslab.errors import ConfigurationError, StoreError, StoreUnavailableError, UnknownExperimentError
from weightslab.history.revisions import head_revision
from weightslab.history.rows import EventRow, ExperimentRow, Rows, utc
from weightslab.history.sqlite_file import (
    BUSY_TIMEOUT_PRAGMA,
    DB_FILENAME,
    ENV_VAR,
    MMAP_PRAGMA,
    connect_read_only,
)

if TYPE_CHECKING:
    from weightslab.history.store import Store

__all__ = ["DirectReader", "open_reader"]

_REVISION = "SELECT version_num FROM alembic_version"
_HAS_REVISION = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
_EXPERIMENT = ("SELECT experiment_id, name, created_at, recipe, config FROM experiments WHERE name = ?")
_EXPERIMENTS = ("SELECT experiment_id, name, created_at, recipe, config FROM experiments "
                "ORDER BY experiment_id")
_EVENTS = ("SELECT experiment_id, seq, kind, payload, created_at, state_hash, actor, code_version, prev_hash, hash "
           "FROM events WHERE experiment_id = ? AND seq >= ? AND seq <= ? ORDER BY seq")
_LISTING = ("SELECT x.experiment_id, x.name, x.created_at, "
            "(SELECT count(*) FROM events AS e WHERE e.experiment_id = x.experiment_id) AS events, "
            "(SELECT count(*) FROM checkpoints AS c WHERE c.experiment_id = x.experiment_id) AS checkpoints, "
            "(SELECT max(e.created_at) FROM events AS e WHERE e.experiment_id = x.experiment_id) "
            "AS last_event_at "
            "FROM experiments AS x ORDER BY x.experiment_id")
_QUERY_ONLY = "PRAGMA query_only = ON"
_NO_SEQ_LIMIT = 2**62


def open_reader(store: Any = None) -> DirectReader | Store:
    """A read-only view of ``store`` for the command-line tools: a :class:`DirectReader` where the store is
    a SQLite directory at this code's revision, else ``Store.open(store, create=False, read_only=True)``.

    Raises:
        StoreUnavailableError / SchemaVersionError / StoreError: as :meth:`Store.open` (read-only).
    """
    reader = DirectReader.open(store)
    if reader is not None:
        return reader
    from weightslab.history.store import Store

    return Store.open(store, create=False, read_only=True)


def _time(value: Any) -> datetime | None:
    """A stored time as SQLAlchemy's SQLite ``DateTime`` reads it back (naive, in UTC)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


class DirectReader:
    """A SQLite store opened read-only through ``sqlite3`` (see the module docstring); a context manager."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self._conn = conn

    @classmethod
    def open(cls, store: Any = None) -> DirectReader | None:
        """The reader of a directory store at this code's revision; None for anything else (a URL, no
        database file, another revision: :meth:`Store.open` says what is wrong)."""
        if store is None:
            store = os.environ.get(ENV_VAR) or "store"
        text = os.fspath(store)
        if "://" in text:
            return None
        root = Path(text).expanduser().resolve()
        database = root / DB_FILENAME
        if not database.is_file():
            return None
        try:
            conn = connect_read_only(str(database))
        except (sqlite3.Error, StoreUnavailableError):
            return None
        try:
            for pragma in (BUSY_TIMEOUT_PRAGMA, MMAP_PRAGMA, _QUERY_ONLY):
                conn.execute(pragma)
            stamped = [r[0] for r in conn.execute(_REVISION)] if conn.execute(_HAS_REVISION).fetchone()[0] else []
        except sqlite3.Error:
            conn.close()
            return None
        if stamped != [head_revision()]:
            conn.close()
            return None
        return cls(root, conn)

    # -- the Store API the read-only tools use ------------------------------------------------------
    def describe(self) -> str:
        return str(self.root)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DirectReader({self.describe()!r})"

    def find_experiment(self, name: str) -> ExperimentRow | None:
        rows = self._read(_EXPERIMENT, (name,))
        return self._experiment(rows[0]) if rows else None

    def get_experiment(self, name: str) -> ExperimentRow:
        """Raises UnknownExperimentError listing the names that exist (as :meth:`Store.get_experiment`)."""
        row = self.find_experiment(name)
        if row is None:
            shown = ", ".join(repr(e.name) for e in self.list_experiments()[:10]) or "none"
            raise UnknownExperimentError(f"no experiment named {name!r} in {self.describe()} (experiments: {shown})")
        return row

    def list_experiments(self) -> list[ExperimentRow]:
        return [self._experiment(r) for r in self._read(_EXPERIMENTS, ())]

    def events(self, experiment_id: int, from_seq: int = 1, to_seq: int | None = None) -> list[EventRow]:
        from weightslab.events.codec import decode_payload

        rows = self._read(_EVENTS, (experiment_id, from_seq, _NO_SEQ_LIMIT if to_seq is None else to_seq))
        return [EventRow(experiment_id=r[0], seq=r[1], kind=r[2], payload=decode_payload(r[3]),
                         created_at=utc(_time(r[4])), state_hash=r[5], actor=r[6], code_version=r[7],
                         prev_hash=r[8], hash=r[9]) for r in rows]

    def experiments_rows(self) -> list[tuple[Any, ...]]:
        """The rows of :func:`weightslab.history.listings.experiments_rows`, times as stored."""
        return [(r[0], r[1], _time(r[2]), r[3], r[4], _time(r[5])) for r in self._read(_LISTING, ())]

    def query_rows(self, sql: str, params: Mapping[str, Any] | None = None) -> Rows:
        """:meth:`Store.query_rows` on this connection (read-only, ``query_only``, ATTACH denied)."""
        from weightslab.history.sqlfence import READ_ONLY_HINT, query_error, single_read_statement

        statement = single_read_statement(sql)
        self._conn.set_authorizer(_deny_attach)
        try:
            cur = self._conn.execute(statement, dict(params or {}))
            if cur.description is None:
                raise ConfigurationError(f"refused: {statement[:60]!r} returns no rows; {READ_ONLY_HINT}")
            columns = [d[0] for d in cur.description]
            return Rows(columns, [tuple(r) for r in cur.fetchall()])
        except sqlite3.ProgrammingError as e:  # a missing bind value, several statements
            raise query_error(e) if "one statement" in str(e) else ConfigurationError(
                f"the query cannot run: {e}") from e
        except sqlite3.DatabaseError as e:
            if _store_fault(e):
                raise StoreError(f"cannot read store {self.describe()}: {e}") from e
            raise query_error(e) from e
        finally:
            self._conn.set_authorizer(None)
            if self._conn.in_transaction:
                self._conn.rollback()

    # -- reading -------------------------------------------------------------------------------------
    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read store {self.describe()}: {e}") from e

    @staticmethod
    def _experiment(r: tuple[Any, ...]) -> ExperimentRow:
        return ExperimentRow(r[0], r[1], _time(r[2]), r[3], dict(_json(r[4]) or {}))


def _deny_attach(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK


def _store_fault(e: sqlite3.DatabaseError) -> bool:
    """The file failed (damaged, unreadable), not the query."""
    return getattr(e, "sqlite_errorname", "") in {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR", "SQLITE_FULL",
                                                   "SQLITE_CANTOPEN"} or isinstance(e, sqlite3.InternalError)
