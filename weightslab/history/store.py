"""The store: one history database (+ its blobs), opened and checked once.

``Store.open(store)`` resolves the location, creates the schema in an empty
database, refuses one at another schema version, and is the one boundary where
driver errors (SQLAlchemy, OS) become WeightsLab errors.
"""

from __future__ import annotations

import errno
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select
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
from weightslab.history import checkpoints, eventlog, migrate, requests
from weightslab.history.blobs import BlobStore, check_hash
from weightslab.history.locate import (
    READS_OPTION,
    StoreLocation,
    make_engine,
    require_database,
    resolve_store,
)
from weightslab.history.manifest import Manifest, parse_manifest
from weightslab.history.rows import ExperimentRow, Rows
from weightslab.history.schema import Event, Experiment, Snapshot
from weightslab.history.sqlfence import query_error, run_query, single_read_statement

if TYPE_CHECKING:  # the read-only tools open stores without pandas, pyarrow or numpy: imported where used
    import pandas as pd

__all__ = ["ExperimentRow", "Store"]


_EXP = Experiment.__table__
_EV = Event.__table__


def _experiment_row(e: Any) -> ExperimentRow:
    return ExperimentRow(e.experiment_id, e.name, e.created_at, e.recipe, dict(e.config or {}))


@contextmanager
def translate_errors(store: str) -> Iterator[None]:
    """Turn driver errors into WeightsLab errors: the one translation boundary.

    Each message is one line: what happened to ``store`` (with the driver's own
    first line, never the SQL or its parameters) and what to do. The SQLAlchemy
    or OS error stays attached as ``__cause__`` (its ``orig`` is the driver's).

    Raises:
        StoreUnavailableError: cannot reach or open the store; a write the
            database or the file system does not permit (read-only file, role
            without the privilege).
        StoreError: disk full, I/O error, a damaged database, a lock held too
            long, a constraint violated, any other database error.
    """
    try:
        yield
    except WeightsLabError:
        raise
    except (SQLAlchemyError, OSError) as e:
        raise _translated(store, e) from e


# What went wrong, from the driver's error code: the primary SQLite result code, or PostgreSQL's SQLSTATE.
_SQLITE_CAUSES = {3: "permission", 5: "locked", 6: "locked", 8: "read_only", 10: "io", 11: "corrupt",
                  13: "full", 14: "unavailable", 19: "constraint", 23: "permission", 26: "corrupt"}
_PG_CAUSES = {"53100": "full", "58030": "io", "XX001": "corrupt", "XX002": "corrupt", "25006": "read_only",
              "42501": "permission", "55P03": "locked", "57014": "canceled", "40P01": "locked", "40001": "locked",
              "42P01": "schema", "42703": "schema", "3D000": "unavailable", "28000": "unavailable",
              "28P01": "unavailable", "53300": "unavailable", "57P01": "unavailable", "57P02": "unavailable",
              "57P03": "unavailable"}
_OS_CAUSES = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EIO: "io", errno.EACCES: "permission",
              errno.EPERM: "permission", errno.EROFS: "read_only", errno.ENOENT: "missing"}
_RESTORE = "restore the store from a backup, then run `weightslab audit`"
_MESSAGES: dict[str, tuple[type[StoreError], str]] = {
    "unavailable": (StoreUnavailableError, "cannot be reached or opened ({reason}); check that the server is "
                    "running and the URL (host, port, database, user) is right, or that the directory and "
                    "its weightslab.db exist and this user may read them"),
    "full": (StoreError, "cannot be written: the disk is full ({reason}); free space where the store lives "
             "(or raise the server's quota) and retry: the interrupted write was rolled back"),
    "io": (StoreError, "hit an I/O error ({reason}); check the disk and the file system (or the server's "
           f"log), then run `weightslab audit`; if it reports damage, {_RESTORE}"),
    "corrupt": (StoreError, f"is damaged ({{reason}}); stop writing to it and {_RESTORE} (`sqlite3 "
                "weightslab.db .recover` salvages what a damaged SQLite file still holds)"),
    "read_only": (StoreUnavailableError, "cannot be written: it is read-only here ({reason}); check the "
                  "permissions of its directory and files (or the server's read-only setting), or open "
                  "it read-only: Store.open(store, read_only=True)"),
    "permission": (StoreUnavailableError, "refused this user ({reason}): the database role (or, for files, "
                   "this user) lacks the privilege; to record, connect as a role that may INSERT, UPDATE and "
                   "DELETE (or fix the file permissions); to only read, open the store read-only: "
                   "Store.open(store, read_only=True)"),
    "locked": (StoreError, "is busy: another process held a lock longer than this one waits ({reason}); "
               "nothing was written; retry once the other writer is done"),
    "canceled": (StoreError, "canceled the statement ({reason}): a statement_timeout or an operator stopped it; "
                 "nothing was written; retry, or raise the server's timeout"),
    "constraint": (StoreError, "refused a write that breaks one of its constraints ({reason}); nothing was "
                   "written; unless the database was edited by hand this is a WeightsLab bug: run "
                   "`weightslab audit` and report it"),
    "schema": (StoreError, "lacks a table or column this WeightsLab expects ({reason}); compare "
               "`weightslab db current` with this version, and upgrade with `weightslab db upgrade`"),
    "missing": (StoreError, f"misses a file ({{reason}}); run `weightslab audit` to list what is gone, then "
                f"{_RESTORE}"),
    "other": (StoreError, "failed ({reason}); run `weightslab audit` to check the store, and report the "
              "error if it persists"),
}


# Causes that are the store's, not the query's: Store.query reports them as StoreErrors.
_STORE_FAULTS = frozenset({"unavailable", "full", "io", "corrupt", "locked"})


def _translated(store: str, e: BaseException) -> StoreError:
    """The WeightsLab error for driver or OS error ``e`` (see :func:`translate_errors`)."""
    orig = getattr(e, "orig", None) or e  # the driver's own error
    cause = _cause(e, orig)
    error, template = _MESSAGES[cause]
    text_ = str(orig).split(" (Background on this error")[0].strip()
    reason = (text_.splitlines()[0] if text_ else type(orig).__name__)[:300]
    return error(f"store {store} " + template.format(reason=reason))


def _cause(e: BaseException, orig: BaseException) -> str:
    if isinstance(e, OSError):
        return _OS_CAUSES.get(e.errno or 0, "other")
    message = str(orig)
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        if "no such table" in message or "no such column" in message:
            return "schema"
        return _SQLITE_CAUSES.get(code & 0xFF, "other")  # extended codes keep the primary one in the low byte
    state = str(getattr(orig, "sqlstate", None) or "")
    if state in _PG_CAUSES:
        return _PG_CAUSES[state]
    if state.startswith("08"):
        return "unavailable"
    if state.startswith("23") or isinstance(e, SAIntegrityError):
        return "constraint"
    if isinstance(e, OperationalError) or isinstance(e, DBAPIError) and e.connection_invalidated:
        return "unavailable"  # no SQLSTATE: the connection itself failed (refused, timed out, dropped)
    return "other"


def _dispose_engines(engines: list[Engine]) -> None:
    for engine in engines:
        engine.dispose()


class Store:
    """An open WeightsLab store (see module docstring)."""

    def __init__(self, location: StoreLocation, engine: Engine, *, read_only: bool = False) -> None:
        self.location = location
        self.engine = engine
        self.read_only = read_only  # opened with read_only=True: transaction() refuses, the engine cannot write
        self.blobs = BlobStore(engine, location.root)
        self._read_engine: Engine | None = None
        # A store dropped without close() still closes its connections (when it is collected), rather
        # than leaving them to the driver's finaliser, which warns about every one still open.
        self._engines: list[Engine] = [engine]
        weakref.finalize(self, _dispose_engines, self._engines)

    # -- opening ---------------------------------------------------------------
    @classmethod
    def open(cls, store: Any = None, *, create: bool = True, read_only: bool = False) -> Store:
        """Open the store at ``store``: a directory, a SQLAlchemy URL, or None ($WEIGHTSLAB_STORE, else ./store).

        Args:
            store: where the store is.
            create: create a missing store (the directory and its SQLite file, or
                the schema in an empty database). False: refuse a store that is not
                there (no SQLite file, or a database without WeightsLab's schema).
            read_only: never write. SQLite is opened through a read-only connection,
                PostgreSQL in read-only transactions; no schema is created or
                migrated, ``blobs/tmp`` is not swept, and :meth:`transaction`
                raises. Implies ``create=False``.

        Raises:
            StoreUnavailableError: malformed URL, unreachable server, unwritable
                directory; no store there (with ``create=False`` or ``read_only``).
            SchemaVersionError: the database schema is older or newer than this code.

        Example:
            >>> with Store.open("./store", create=False, read_only=True) as store:
            ...     names = [e.name for e in store.list_experiments()]
        """
        location = resolve_store(store)
        name = location.describe()
        create = create and not read_only
        if not create:
            require_database(location)
        with translate_errors(name):
            engine = make_engine(location, read_only=read_only)
            try:
                migrate.ensure_schema(engine, name, create=create)
            except BaseException:
                engine.dispose()
                raise
        opened = cls(location, engine, read_only=read_only)
        if not read_only:
            opened.blobs.sweep_temporary()  # what writers killed mid-write (an hour or more ago) left behind
        return opened

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
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success.

        Raises:
            StoreError: the store was opened read-only.
        """
        if self.read_only:
            raise StoreError(
                f"store {self.describe()} was opened read-only (Store.open(..., read_only=True)), so nothing "
                "can be written to it; open it with Store.open(store) to record"
            )
        with translate_errors(self.describe()), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads (on SQLite it takes no write lock)."""
        with translate_errors(self.describe()), self.engine.connect().execution_options(**{READS_OPTION: True}) as conn:
            yield conn

    # -- experiments -----------------------------------------------------------
    def create_experiment(self, name: str, *, config: Mapping[str, Any] | None = None,
                          recipe: str | None = None, conn: Connection | None = None) -> ExperimentRow:
        """Register a new experiment name (in ``conn``'s transaction, when given: the row then exists only if
        that transaction commits, e.g. together with the creation event).

        Raises:
            DuplicateExperimentError: the name is taken (open it instead, or pick another name).
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigurationError(f"experiment name must be a non-empty string of ≤200 characters, got {name!r}")
        from weightslab.events.codec import normalise

        clean = normalise(dict(config or {}), "config")
        if conn is None:
            with self.transaction() as own:
                return self.create_experiment(name, config=config, recipe=recipe, conn=own)
        duplicate = DuplicateExperimentError(
            f"an experiment named {name!r} already exists in {self.describe()}; open it to continue it, or "
            "choose another name.")
        if conn.execute(select(_EXP.c.experiment_id).where(_EXP.c.name == name)).first() is not None:
            raise duplicate
        try:
            with translate_errors(self.describe()):
                conn.execute(_EXP.insert().values(name=name, created_at=datetime.now(UTC), recipe=recipe,
                                                  config=clean))
        except StoreError as e:
            if isinstance(e.__cause__, SAIntegrityError):  # another process registered it just now
                raise duplicate from e.__cause__
            raise
        return _experiment_row(conn.execute(select(_EXP).where(_EXP.c.name == name)).one())

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

    def head(self, experiment_id: int) -> tuple[int, str | None]:
        """The head anchored on the experiment's row: (seq, hash) of its latest event."""
        with self.reading() as conn:
            return eventlog.read_head(conn, experiment_id)

    def event_hash(self, experiment_id: int, seq: int) -> str | None:
        """The hash of event ``seq`` (None: no such event)."""
        with self.reading() as conn:
            return conn.scalar(select(_EV.c.hash).where(_EV.c.experiment_id == experiment_id, _EV.c.seq == seq))

    def verify_chain(self, experiment_id: int) -> eventlog.ChainReport:
        with self.reading() as conn:
            return eventlog.verify_chain(conn, experiment_id)

    # -- requests: edits asked from outside the experiment's process (history/requests.py) -------------
    def file_request(self, name: str, kind: str, args: Mapping[str, Any], *,
                     requested_by: str | None = None) -> requests.RequestRow:
        """File a request for experiment ``name`` to apply ``kind`` with ``args`` at its next safe point.

        Raises:
            UnknownExperimentError: no such experiment (nothing is written).
            ConfigurationError: a kind that cannot be requested, or bad arguments (nothing is written).

        Example:
            >>> store.file_request("x0", "prune", {"layer_index": 1, "neuron_indices": [0, 3]}).request_id
            1
        """
        from weightslab.events.requests import check_request

        clean = check_request(kind, args)
        row = self.get_experiment(name)
        with self.transaction() as conn:
            return requests.file_request(conn, row.experiment_id, kind, clean,
                                         requested_by or eventlog.default_actor())

    def list_requests(self, experiment_id: int, status: str | None = None) -> list[requests.RequestRow]:
        """An experiment's requests in the order they were filed (optionally only those of ``status``)."""
        with self.reading() as conn:
            return requests.list_requests(conn, experiment_id, status)

    def request(self, request_id: int) -> requests.RequestRow | None:
        with self.reading() as conn:
            return requests.get(conn, request_id)

    def cancel_request(self, request_id: int) -> requests.RequestRow:
        """Cancel a pending request.

        Raises:
            ConfigurationError: no such request, or it is no longer pending (the message gives its status).
        """
        with self.transaction() as conn:
            if requests.cancel(conn, request_id):
                return requests.get(conn, request_id)  # type: ignore[return-value]
            row = requests.get(conn, request_id)
        if row is None:
            raise ConfigurationError(f"no request {request_id} in {self.describe()}; list them with "
                                     "`weightslab requests NAME`")
        raise ConfigurationError(f"request {request_id} is {row.status}, not pending: only a pending request can be "
                                 "cancelled" + (f" (it became event {row.applied_seq})" if row.applied_seq else ""))

    def next_request(self, experiment_id: int) -> int | None:
        """The id of the experiment's oldest pending request (one indexed probe: a safe point's cost)."""
        with self.reading() as conn:
            return requests.next_pending(conn, experiment_id)

    def claim_request(self, request_id: int) -> requests.RequestRow | None:
        """Take a pending request to apply it; None if another process took it or it was cancelled."""
        with self.transaction() as conn:
            return requests.claim(conn, request_id)

    def finish_request(self, request_id: int, status: str, *, applied_seq: int | None = None,
                       error: str | None = None, conn: Connection | None = None) -> bool:
        """Mark a request being applied ``applied`` or ``refused`` (in ``conn``'s transaction when given)."""
        if conn is not None:
            return requests.finish(conn, request_id, status, applied_seq=applied_seq, error=error)
        with self.transaction() as own:
            return requests.finish(own, request_id, status, applied_seq=applied_seq, error=error)

    def release_requests(self, experiment_id: int, request_id: int | None = None) -> int:
        """Put back in the queue one request being applied (``request_id``), or every one of the experiment
        left ``applying`` by a process that died; returns how many."""
        with self.transaction() as conn:
            if request_id is not None:
                requests.release(conn, request_id)
                return 1
            return requests.release_stale(conn, experiment_id)

    # -- snapshots ---------------------------------------------------------------
    def write_snapshot(self, experiment_id: int, table_name: str, event_seq: int, frame: pd.DataFrame,
                       conn: Connection | None = None) -> int:
        """Store a DataFrame as a Parquet snapshot blob; returns its snapshot id."""
        from weightslab.history import snapshots

        if conn is not None:
            return snapshots.register_snapshot(conn, self.blobs, experiment_id, table_name, event_seq, frame)
        with self.transaction() as c:
            return snapshots.register_snapshot(c, self.blobs, experiment_id, table_name, event_seq, frame)

    def read_snapshot(self, snapshot_id: int) -> pd.DataFrame:
        """Read a registered snapshot back (verified against its hash)."""
        from weightslab.history import snapshots

        with self.reading() as conn:
            digest = conn.scalar(select(Snapshot.blob_hash).where(Snapshot.snapshot_id == snapshot_id))
            if digest is None:
                raise StoreError(f"no snapshot with id {snapshot_id} in {self.describe()}")
            return snapshots.read_parquet_bytes(self.blobs.get(digest, conn))

    def snapshot_ids(self, experiment_id: int) -> list[int]:
        """The ids of an experiment's snapshots, in order."""
        with self.reading() as conn:
            return list(conn.scalars(select(Snapshot.snapshot_id).where(Snapshot.experiment_id == experiment_id)
                                     .order_by(Snapshot.snapshot_id)))

    # -- checkpoints and manifests --------------------------------------------------
    def checkpoints(self, experiment_id: int) -> list[checkpoints.CheckpointRow]:
        """An experiment's rows of the ``checkpoints`` table, by id."""
        with self.reading() as conn:
            return checkpoints.checkpoint_rows(conn, experiment_id)

    def next_checkpoint_id(self, experiment_id: int) -> int:
        with self.reading() as conn:
            return checkpoints.next_checkpoint_id(conn, experiment_id)

    def add_checkpoint(self, conn: Connection, experiment_id: int, row: checkpoints.CheckpointRow) -> None:
        """Register a checkpoint in ``conn``'s transaction (that of its dump event)."""
        checkpoints.add_checkpoint(conn, experiment_id, row)

    def read_manifest(self, digest: str, conn: Connection | None = None) -> Manifest:
        """Read, verify and parse the manifest blob ``digest``.

        Raises:
            BlobNotFoundError / IntegrityError: missing, damaged, or not a manifest.
        """
        return parse_manifest(self.blobs.get(check_hash(digest), conn), digest)

    # -- statistics ----------------------------------------------------------------
    def write_sample_rows(self, experiment_id: int, jobs: Sequence[tuple[str, Mapping[str, Any]]],
                          conn: Connection | None = None) -> None:
        """Upsert ``sample_stats`` rows, given per split as columns (see :func:`stats.upsert_sample_stats`),
        in ``conn``'s transaction or a new one."""
        if conn is None:
            with self.transaction() as own:
                self.write_sample_rows(experiment_id, jobs, own)
            return
        from weightslab.history import stats

        for split, columns in jobs:
            stats.upsert_sample_stats(conn, experiment_id, split, columns)

    def write_neuron_rows(self, conn: Connection, experiment_id: int, rows: Sequence[Sequence[Any]], *,
                          rewrite: Sequence[tuple[int, str]] = ()) -> None:
        """Upsert ``neuron_stats`` rows in ``conn``'s transaction; the (layer, split) pairs in ``rewrite``
        lose their old rows first (a layer whose width changed)."""
        from weightslab.history import stats

        stats.replace_neuron_stats(conn, experiment_id, rows, rewrite)

    def adopt_experiment(self, experiment_id: int, *, config: Mapping[str, Any], recipe: str | None,
                         conn: Connection) -> ExperimentRow:
        """Record, in ``conn``'s transaction, the settings of a registered experiment that has no events
        (a store written before creation was atomic, whose creator died before its first event)."""
        from weightslab.events.codec import normalise

        conn.execute(_EXP.update().where(_EXP.c.experiment_id == experiment_id)
                     .values(config=normalise(dict(config), "config"), recipe=recipe))
        return _experiment_row(conn.execute(select(_EXP).where(_EXP.c.experiment_id == experiment_id)).one())

    # -- read-only SQL -------------------------------------------------------------
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run one read-only SQL statement and return a DataFrame (:meth:`query_rows`, as a DataFrame).

        Example:
            >>> store.query("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind")
        """
        return self.query_rows(sql, params).to_frame()

    def query_rows(self, sql: str, params: Mapping[str, Any] | None = None) -> Rows:
        """Run one read-only SQL statement and return its column names and rows (no pandas).

        The database itself keeps the store unchanged (see :mod:`weightslab.history.sqlfence`):
        the query runs on a connection that cannot write (SQLite opened read-only
        with ``PRAGMA query_only``; a PostgreSQL read-only transaction), always
        rolled back, and the database runs one statement only (sqlite3's rule; a
        PostgreSQL prepared statement; SQLite also denies ATTACH). Before that,
        sqlparse classifies the text: one statement, a SELECT, WITH, VALUES,
        TABLE, EXPLAIN or SHOW.

        Raises:
            ConfigurationError: several statements, a statement that is not a
                query, a write refused by the database, or SQL the database rejects.
            StoreError: the store itself failed (unreachable, damaged, I/O error).

        Example:
            >>> store.query_rows("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind").rows
            [('create', 1), ('train', 4)]
        """
        statement = single_read_statement(sql)
        engine = self._reader()
        with translate_errors(self.describe()), engine.connect() as conn:
            driver_error = conn.dialect.loaded_dbapi.Error
            try:
                columns, rows = run_query(conn, statement, dict(params or {}))
            except DBAPIError as e:
                if e.connection_invalidated or _cause(e, e.orig or e) in _STORE_FAULTS:
                    raise  # the store failed, not the query: translated by translate_errors
                raise query_error(e.orig) from e
            except driver_error as e:  # raised by the driver itself in run_prepared, unwrapped
                if _cause(e, e) in _STORE_FAULTS:
                    raise _translated(self.describe(), e) from e
                raise query_error(e) from e
            except (SAStatementError, InvalidRequestError) as e:  # e.g. a missing bind parameter
                reason = str(getattr(e, "orig", None) or e).split(" (Background on this error")[0]
                raise ConfigurationError(f"the query cannot run: {reason}") from e
            finally:
                conn.rollback()
        return Rows(list(columns), [tuple(r) for r in rows])

    def _reader(self) -> Engine:
        """The engine of :meth:`query`: one that cannot write (the store's own, if it was opened read-only)."""
        if self.read_only:
            return self.engine
        if self._read_engine is None:
            self._read_engine = make_engine(self.location, read_only=True)
            self._engines.append(self._read_engine)
        return self._read_engine
