"""Where a store lives: resolve ``store=`` to a SQLAlchemy URL and a file root, make engines.

``store`` may be a directory (the SQLite file ``weightslab.db`` and the blob
files live inside it), a SQLAlchemy URL (``sqlite:///path/x.db``,
``postgresql+psycopg://user@host/db``), or None: ``$WEIGHTSLAB_STORE``, else ``./store``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from weightslab.errors import StoreUnavailableError
from weightslab.history.sqlite_file import (
    BUSY_TIMEOUT_PRAGMA,
    DB_FILENAME,
    ENV_VAR,
    MISSING_STORE_HINT,
    MMAP_PRAGMA,
    SQLITE_BUSY_TIMEOUT_MS,
    connect_read_only,
)

__all__ = ["DB_FILENAME", "ENV_VAR", "MISSING_STORE_HINT", "READS_OPTION", "SQLITE_BUSY_TIMEOUT_MS", "StoreLocation",
           "make_engine", "require_database", "resolve_store"]

# Re-exported: the file's name, the environment variable, the busy timeout and its pragma live in
# weightslab.history.sqlite_file (no SQLAlchemy there), which the read-only tools import alone.
_BUSY_TIMEOUT_PRAGMA = BUSY_TIMEOUT_PRAGMA
_MMAP_PRAGMA = MMAP_PRAGMA

#: Execution option of connections that only read (``Store.reading``): a deferred ``BEGIN`` on SQLite.
READS_OPTION = "weightslab_reads"


@dataclass(frozen=True)
class StoreLocation:
    """A resolved store: the database URL and, for SQLite, the directory holding blobs."""

    url: URL
    root: Path | None  # directory for blob files; None: blobs live in the database

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def describe(self) -> str:
        """The store as a user would pass it again (password hidden)."""
        if self.backend == "sqlite" and self.root is not None:
            return str(self.root)
        return self.url.render_as_string(hide_password=True)


def resolve_store(store: str | os.PathLike[str] | None) -> StoreLocation:
    """Turn a ``store=`` argument into a :class:`StoreLocation`.

    Raises:
        StoreUnavailableError: for a malformed URL or an unsupported backend.
    """
    if store is None:
        store = os.environ.get(ENV_VAR) or "store"
    text = os.fspath(store)
    if "://" not in text:
        root = Path(text).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise StoreUnavailableError(
                f"store {text!r} is a file, not a directory; pass the directory that holds "
                f"{DB_FILENAME} (it is created if missing) or a SQLAlchemy URL."
            )
        return StoreLocation(url=URL.create("sqlite", database=str(root / DB_FILENAME)), root=root)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as e:
        raise StoreUnavailableError(
            f"store URL {text!r} is malformed ({e}); expected e.g. "
            "'postgresql+psycopg://user@host:5432/dbname' or a directory path."
        ) from e
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise StoreUnavailableError(
                "an in-memory SQLite store would lose the history at exit; give a file path "
                "or a directory."
            )
        root = Path(url.database).expanduser().resolve().parent
        return StoreLocation(url=url.set(database=str(Path(url.database).expanduser().resolve())), root=root)
    if backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return StoreLocation(url=url, root=None)
    raise StoreUnavailableError(
        f"store backend {backend!r} is not supported; use a directory (SQLite) or a "
        "'postgresql+psycopg://...' URL."
    )


def require_database(location: StoreLocation) -> None:
    """Refuse a SQLite store whose database file does not exist (a server is asked when connecting).

    Raises:
        StoreUnavailableError: no database file at the location.
    """
    if location.backend != "sqlite":
        return
    database = Path(str(location.url.database))
    if not database.is_file():
        raise StoreUnavailableError(
            f"no store at {location.describe()} (no {database.name} there); {MISSING_STORE_HINT}"
        )


def make_engine(location: StoreLocation, *, read_only: bool = False) -> Engine:
    """Create an engine configured for WeightsLab.

    SQLite: WAL journal, a busy timeout, foreign keys on, and every write
    transaction opened with ``BEGIN IMMEDIATE`` (so two writers queue instead of
    failing with "database is locked" half-way). ``read_only`` engines open the
    file read-only (``mode=ro``: SQLite itself refuses every write) with
    ``PRAGMA query_only`` on top, and never create the directory or the file.
    PostgreSQL: psycopg 3 with a connect timeout; read-only engines open
    read-only transactions.

    A read-only SQLite connection still needs the WAL index (the ``-shm`` file):
    SQLite creates it beside the database if it is missing, as for any reader.
    Where it cannot (the directory is read-only for this process) and no ``-wal``
    file holds transactions, the file cannot change under us: it is opened
    ``immutable``. A ``-wal`` file with transactions in a read-only directory is
    refused (reading past it would miss them): the owner must open the store once
    to checkpoint it.
    """
    backend = location.backend
    try:
        if backend == "sqlite":
            assert location.root is not None
            if read_only:
                path = str(location.url.database)
                engine = create_engine(location.url, creator=lambda: connect_read_only(path))
            else:
                location.root.mkdir(parents=True, exist_ok=True)
                engine = create_engine(
                    location.url,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
                )
            _configure_sqlite(engine, read_only=read_only)
            return engine
        engine = create_engine(
            location.url,
            connect_args={"connect_timeout": 5},
            pool_pre_ping=True,
            execution_options={"postgresql_readonly": True} if read_only else {},
        )
        return engine
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise StoreUnavailableError(
            f"cannot create a database engine for {location.describe()!r}: {e}. "
            "For PostgreSQL install the driver: pip install 'weightslab[postgres]'."
        ) from e


def _configure_sqlite(engine: Engine, *, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every test
        cur = dbapi_conn.cursor()
        cur.execute(_BUSY_TIMEOUT_PRAGMA)
        if not read_only:
            # WAL is a property of the database file: set it once. Setting it on every new
            # connection would wait for (and fail behind) a writer holding the lock.
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        # Reads map the database file instead of copying every page through read(): a scan of
        # 10^6 sample rows (top-100 by loss) takes two thirds of the time. Address space only.
        cur.execute(_MMAP_PRAGMA)
        if read_only:
            cur.execute("PRAGMA query_only = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # pragma: no cover - exercised by every test
        # Reads (Store.reading) take no write lock: in WAL mode they see a consistent snapshot and
        # neither wait for nor hold up a writer.
        reads = read_only or conn.get_execution_options().get(READS_OPTION, False)
        conn.exec_driver_sql("BEGIN" if reads else "BEGIN IMMEDIATE")
