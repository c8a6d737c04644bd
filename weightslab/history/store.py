"""The store: one history database (+ its blobs), opened and checked once.

``Store.open(store)`` resolves the location, creates the schema in an empty
database, refuses one at another schema version, and is the one boundary where
driver errors (SQLAlchemy, OS) become WeightsLab errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError, InvalidRequestError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import StatementError as SAStatementError

from weightslab.errors import (
    ConfigurationError,
    DuplicateExperimentError,
    StoreError,
    StoreUnavailableError,
    UnknownExperimentError,
    WeightsLabError,
)
from weightslab.history import eventlog, migrate, snapshots
from weightslab.history.blobs import BlobStore
from weightslab.history.locate import READS_OPTION, StoreLocation, make_engine, resolve_store
from weightslab.history.schema import Experiment, Snapshot
from weightslab.history.sqlfence import READ_ONLY_HINT, query_error, run_prepared, single_read_statement

__all__ = ["ExperimentRow", "Store"]


@dataclass(frozen=True)
class ExperimentRow:
    experiment_id: int
    name: str
    created_at: datetime
    recipe: str | None
    config: dict[str, Any]


_EXP = Experiment.__table__


def _experiment_row(e: Any) -> ExperimentRow:
    return ExperimentRow(e.experiment_id, e.name, e.created_at, e.recipe, dict(e.config or {}))


@contextmanager
def translate_errors(store: str) -> Iterator[None]:
    """Turn driver errors into WeightsLab errors (the one translation boundary)."""
    try:
        yield
    except WeightsLabError:
        raise
    except OperationalError as e:
        raise StoreUnavailableError(
            f"store {store} cannot be reached or written ({e.orig}). Check that the server is "
            "running and the URL (host, port, database, user) is right, or that the directory "
            "is writable."
        ) from e
    except (DBAPIError, SQLAlchemyError) as e:
        raise StoreError(f"store {store}: {e}") from e
    except OSError as e:
        raise StoreError(f"store {store}: {e}") from e


class Store:
    """An open WeightsLab store (see module docstring)."""

    def __init__(self, location: StoreLocation, engine: Engine) -> None:
        self.location = location
        self.engine = engine
        self.blobs = BlobStore(engine, location.root)
        self._read_engine: Engine | None = None

    # -- opening ---------------------------------------------------------------
    @classmethod
    def open(cls, store: Any = None) -> Store:
        """Open (and if empty, create) the store at ``store`` (directory, URL, or None).

        Raises:
            StoreUnavailableError: malformed URL, unreachable server, unwritable directory.
            SchemaVersionError: the database schema is older or newer than this code.
        """
        location = resolve_store(store)
        name = location.describe()
        with translate_errors(name):
            engine = make_engine(location)
            try:
                migrate.ensure_schema(engine, name)
            except BaseException:
                engine.dispose()
                raise
        store = cls(location, engine)
        store.blobs.sweep_temporary()  # what writers killed mid-write (an hour or more ago) left behind
        return store

    def describe(self) -> str:
        return self.location.describe()

    def close(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.describe()!r})"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success."""
        with translate_errors(self.describe()), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads (on SQLite it takes no write lock)."""
        with translate_errors(self.describe()), self.engine.connect().execution_options(**{READS_OPTION: True}) as conn:
            yield conn

    # -- experiments -----------------------------------------------------------
    def create_experiment(self, name: str, *, config: Mapping[str, Any] | None = None,
                          recipe: str | None = None) -> ExperimentRow:
        """Register a new experiment name.

        Raises:
            DuplicateExperimentError: the name is taken (open it instead, or pick another name).
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            from weightslab.errors import ConfigurationError

            raise ConfigurationError(f"experiment name must be a non-empty string of ≤200 characters, got {name!r}")
        from weightslab.events.codec import normalise

        clean = normalise(dict(config or {}), "config")
        try:
            with self.transaction() as conn:
                conn.execute(Experiment.__table__.insert().values(
                    name=name, created_at=datetime.now(UTC), recipe=recipe, config=clean))
        except StoreError as e:
            if isinstance(e.__cause__, SAIntegrityError):
                raise DuplicateExperimentError(
                    f"an experiment named {name!r} already exists in {self.describe()}; "
                    "open it to continue it, or choose another name."
                ) from e.__cause__
            raise
        return self.get_experiment(name)

    def find_experiment(self, name: str) -> ExperimentRow | None:
        with self.reading() as conn:
            e = conn.execute(select(_EXP).where(_EXP.c.name == name)).first()
            return None if e is None else _experiment_row(e)

    def get_experiment(self, name: str) -> ExperimentRow:
        """Raises UnknownExperimentError listing the names that exist."""
        row = self.find_experiment(name)
        if row is None:
            names = [e.name for e in self.list_experiments()]
            shown = ", ".join(repr(n) for n in names[:10]) or "none"
            raise UnknownExperimentError(
                f"no experiment named {name!r} in {self.describe()} (experiments: {shown})"
            )
        return row

    def list_experiments(self) -> list[ExperimentRow]:
        with self.reading() as conn:
            return [_experiment_row(e) for e in conn.execute(select(_EXP).order_by(_EXP.c.experiment_id))]

    # -- events ----------------------------------------------------------------
    def append_event(self, experiment_id: int, kind: str, payload: Mapping[str, Any], *,
                     expected_last_seq: int, conn: Connection | None = None,
                     **kwargs: Any) -> eventlog.EventRow:
        """Append one event (see :func:`eventlog.append_event`), in ``conn`` or a new transaction."""
        if conn is not None:
            return eventlog.append_event(conn, experiment_id, kind, payload,
                                         expected_last_seq=expected_last_seq, **kwargs)
        with self.transaction() as c:
            return eventlog.append_event(c, experiment_id, kind, payload,
                                         expected_last_seq=expected_last_seq, **kwargs)

    def events(self, experiment_id: int, from_seq: int = 1, to_seq: int | None = None) -> list[eventlog.EventRow]:
        with self.reading() as conn:
            return eventlog.read_events(conn, experiment_id, from_seq, to_seq)

    def last_seq(self, experiment_id: int) -> int:
        from sqlalchemy import func

        from weightslab.history.schema import Event

        with self.reading() as conn:
            return int(conn.scalar(select(func.coalesce(func.max(Event.seq), 0))
                                   .where(Event.experiment_id == experiment_id)))

    def verify_chain(self, experiment_id: int) -> eventlog.ChainReport:
        with self.reading() as conn:
            return eventlog.verify_chain(conn, experiment_id)

    # -- snapshots ---------------------------------------------------------------
    def write_snapshot(self, experiment_id: int, table_name: str, event_seq: int, frame: pd.DataFrame,
                       conn: Connection | None = None) -> int:
        """Store a DataFrame as a Parquet snapshot blob; returns its snapshot id."""
        if conn is not None:
            return snapshots.register_snapshot(conn, self.blobs, experiment_id, table_name, event_seq, frame)
        with self.transaction() as c:
            return snapshots.register_snapshot(c, self.blobs, experiment_id, table_name, event_seq, frame)

    def read_snapshot(self, snapshot_id: int) -> pd.DataFrame:
        """Read a registered snapshot back (verified against its hash)."""
        with self.reading() as conn:
            digest = conn.scalar(select(Snapshot.blob_hash).where(Snapshot.snapshot_id == snapshot_id))
            if digest is None:
                raise StoreError(f"no snapshot with id {snapshot_id} in {self.describe()}")
            return snapshots.read_parquet_bytes(self.blobs.get(digest, conn))

    # -- read-only SQL -------------------------------------------------------------
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run one read-only SQL statement and return a DataFrame.

        Three fences keep the store unchanged: only one statement is accepted
        (checked here, and by the database itself: SQLite's driver runs one
        statement per call, PostgreSQL gets it as a prepared statement, which
        cannot hold two); it must start with SELECT, WITH, VALUES, TABLE,
        EXPLAIN or SHOW; and it runs in a read-only transaction (``PRAGMA
        query_only`` on SQLite, ``SET TRANSACTION READ ONLY`` on PostgreSQL)
        that is always rolled back.

        Raises:
            ConfigurationError: several statements, a statement that is not a
                query, a write refused by the database, or SQL the database rejects.

        Example:
            >>> store.query("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind")
        """
        statement = single_read_statement(sql, self.location.backend)
        engine = self._reader()
        with translate_errors(self.describe()), engine.connect() as conn:
            try:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    columns, rows = run_prepared(conn, statement, dict(params or {}))
                else:
                    conn.exec_driver_sql("PRAGMA query_only = ON")
                    result = conn.execute(text(statement), dict(params or {}))
                    if not result.returns_rows:
                        raise ConfigurationError(f"refused: {statement[:60]!r} returns no rows; {READ_ONLY_HINT}")
                    columns, rows = list(result.keys()), list(result.fetchall())
            except DBAPIError as e:
                if e.connection_invalidated:
                    raise
                raise query_error(e.orig) from e
            except (SAStatementError, InvalidRequestError) as e:  # e.g. a missing bind parameter
                reason = str(getattr(e, "orig", None) or e).split(" (Background on this error")[0]
                raise ConfigurationError(f"the query cannot run: {reason}") from e
            finally:
                conn.rollback()
        return pd.DataFrame([tuple(r) for r in rows], columns=columns)

    def _reader(self) -> Engine:
        if self._read_engine is None:
            self._read_engine = make_engine(self.location, read_only=True)
        return self._read_engine
