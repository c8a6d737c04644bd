"""Bulk upserts of the statistics tables (``sample_stats``, ``neuron_stats``).

Statistics are flushed at event boundaries, tens of thousands of rows at a
time, so the rows go in bulk. On SQLite, sample (and neuron) rows go as multi-row
``INSERT ... VALUES (…), (…), … ON CONFLICT DO UPDATE`` statements of
:data:`SQLITE_ROWS_PER_STATEMENT` rows: the parameters are one flat list built
column by column (no per-row Python tuples) and each statement's upserts run
inside SQLite without Python's GIL, so a background flush overlaps training
(benchmarked at about half the CPU of staging through a temporary table).
On PostgreSQL sample rows are encoded by numpy, column by column, as one binary
``COPY`` stream (no per-row Python) into a temporary staging table of the
statistics columns only (the experiment id and split are bound once), then merged:
a small write by ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` (an index probe
per row), a large one (every row of a split, each epoch) by ``UPDATE ... FROM``
in one hash join (one pass over the split's pages, no row lock per row) and an
insert of the rows it did not find. ``sample_stats`` keeps free room on its
pages (fill factor 40, revision 0006) so those updates are HOT: no new index
entry, and the next write prunes the previous versions on the page without a
VACUUM (see docs/postgres.md).
Neuron rows are few and keep the text ``COPY``. Values are always bound
parameters or ``COPY`` data, never formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import Boolean, Connection, Float, delete, tuple_
from sqlalchemy.exc import DBAPIError

from weightslab.history.schema import NeuronStat, SampleStat

__all__ = ["NEURON_COLUMNS", "SAMPLE_COLUMNS", "replace_neuron_stats", "upsert_neuron_stats", "upsert_sample_stats"]

def _columns(table: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(key columns, the columns a row gives) of a statistics table: the experiment id is bound once."""
    key = tuple(c.name for c in table.primary_key.columns)
    return key, tuple(c.name for c in table.columns if c.name != "experiment_id")


# Derived from the schema (weightslab/history/schema.py), the one place the tables are defined.
_SAMPLE_KEY, _SAMPLE_ROW = _columns(SampleStat.__table__)
_NEURON_KEY, NEURON_COLUMNS = _columns(NeuronStat.__table__)
#: The columns of a split's sample rows (the split itself is bound once per statement).
SAMPLE_COLUMNS = tuple(c for c in _SAMPLE_ROW if c != "split")


def _merge_sql(table: str, columns: Sequence[str], key: Sequence[str], source: str) -> str:
    """PostgreSQL: merge the rows of temporary table ``source`` into ``table``."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    cols = ", ".join(columns)
    return (f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source} "  # noqa: S608 - constants only
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


# Statements built once from constant identifiers; every value is a bound parameter.
_SAMPLE_ALL = ("experiment_id", "split", *SAMPLE_COLUMNS)
_NEURON_ALL = ("experiment_id", *NEURON_COLUMNS)
# Rows per multi-row statement: 256 rows bind 256 * 7 + 2 parameters, far below SQLite's limit of
# 32766, and amortise the per-statement cost (a larger statement measured no faster).
SQLITE_ROWS_PER_STATEMENT = 256


def _sqlite_upsert(table: str, columns: Sequence[str], key: Sequence[str], head: Sequence[str], rows: int) -> str:
    """The upsert of ``rows`` rows of ``columns`` into ``table``: the first values of every row are the
    numbered parameters ``head`` (bound once a statement: ``?1`` experiment id, ``?2`` split), the
    others a ``?`` each."""
    values = "(" + ", ".join([*head, *["?"] * (len(columns) - len(head))]) + ")"
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 - constants only
            + ", ".join([values] * rows) + f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


_SQLITE_SAMPLE_BULK, _SQLITE_SAMPLE_ONE = (
    _sqlite_upsert("sample_stats", _SAMPLE_ALL, _SAMPLE_KEY, ("?1", "?2"), n) for n in (SQLITE_ROWS_PER_STATEMENT, 1))
_SQLITE_NEURON_BULK, _SQLITE_NEURON_ONE = (
    _sqlite_upsert("neuron_stats", _NEURON_ALL, _NEURON_KEY, ("?1",), n) for n in (SQLITE_ROWS_PER_STATEMENT, 1))
_PG_NEURON = _merge_sql("neuron_stats", _NEURON_ALL, _NEURON_KEY, "wl_tmp_neuron_stats")
_PG_NEURON_TMP = ("CREATE TEMP TABLE IF NOT EXISTS wl_tmp_neuron_stats "
                  "(LIKE neuron_stats INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
_PG_NEURON_COPY = f"COPY wl_tmp_neuron_stats ({', '.join(_NEURON_ALL)}) FROM STDIN"


@contextmanager
def _driver_cursor(conn: Connection, what: str) -> Iterator[Any]:
    """A cursor of the driver's own connection (bulk paths SQLAlchemy does not offer: executemany of prepared
    multi-row statements, COPY). The driver's errors leave it as SQLAlchemy's (``DBAPIError`` and its
    subclasses, the driver's error as ``orig``), as every other statement's do, so that the store's one
    translation boundary turns them into WeightsLab errors."""
    driver = conn.connection.driver_connection
    assert driver is not None
    error = conn.dialect.loaded_dbapi.Error
    cur = driver.cursor()
    try:
        yield cur
    except error as e:
        raise DBAPIError.instance(what, None, e, error) from e
    finally:
        cur.close()


def _column(values: Any, nullable: bool, kind: type) -> list[Any]:
    """A column as Python values, NaN (or a masked entry) as None."""
    arr = np.asarray(values)
    if nullable and arr.dtype.kind == "f" and np.isnan(arr).any():
        out = arr.astype(object)
        nan = np.isnan(arr)
        if kind is int:
            out[~nan] = arr[~nan].astype(np.int64).tolist()
        out[nan] = None
        return out.tolist()
    if kind is bool:
        return arr.astype(bool).tolist()
    if kind is int:
        return arr.astype(np.int64).tolist()
    if kind is float:
        return arr.astype(np.float64).tolist()
    return arr.tolist()


def _kind(column: Any) -> tuple[bool, type]:
    """(nullable, Python type) of a column, for :func:`_column`."""
    t = column.type
    return bool(column.nullable), bool if isinstance(t, Boolean) else float if isinstance(t, Float) else int


_SAMPLE_KINDS = {c: _kind(SampleStat.__table__.c[c]) for c in SAMPLE_COLUMNS}


def upsert_sample_stats(
    conn: Connection, experiment_id: int, split: str, columns: Mapping[str, np.ndarray]
) -> int:
    """Insert or update per-sample rows of one split; returns the number of rows.

    ``columns`` maps each name of :data:`SAMPLE_COLUMNS` to an array of equal
    length; in float arrays NaN means null (never-seen samples).
    """
    n = len(columns["sample_id"])
    if n == 0:
        return 0
    if conn.dialect.name == "sqlite":
        _sqlite_samples(conn, experiment_id, split, [_column(columns[c], *_SAMPLE_KINDS[c]) for c in SAMPLE_COLUMNS], n)
    else:
        _pg_samples(conn, experiment_id, split, columns, n)
    return n


def _sqlite_samples(conn: Connection, experiment_id: int, split: str, cols: list[list[Any]], n: int) -> None:
    """Sample rows as multi-row upserts whose parameters are sliced from one flat, row-major list."""
    width = len(cols)
    flat: list[Any] = [None] * (n * width)
    for j, col in enumerate(cols):
        flat[j::width] = col
    _sqlite_multirow(conn, _SQLITE_SAMPLE_BULK, _SQLITE_SAMPLE_ONE, [experiment_id, split], flat, width, n)


def _sqlite_multirow(conn: Connection, bulk: str, one: str, head: list[Any], flat: list[Any], width: int,
                     n: int) -> None:
    """Run ``bulk`` (SQLITE_ROWS_PER_STATEMENT rows) and then ``one`` (a row) over ``n`` rows of ``width``
    values in ``flat``, each statement's parameters prefixed with ``head``."""
    k = SQLITE_ROWS_PER_STATEMENT
    full = n - n % k
    with _driver_cursor(conn, bulk.split(" VALUES ")[0]) as cur:
        if full:
            cur.executemany(bulk, (head + flat[i * width:(i + k) * width] for i in range(0, full, k)))
        if full < n:
            cur.executemany(one, (head + flat[i * width:(i + 1) * width] for i in range(full, n)))


def upsert_neuron_stats(conn: Connection, experiment_id: int, rows: Sequence[Sequence[Any]]) -> int:
    """Insert or update neuron rows given as tuples in :data:`NEURON_COLUMNS` order."""
    if not rows:
        return 0
    width = len(NEURON_COLUMNS)
    flat = list(chain.from_iterable(rows))
    if len(flat) != width * len(rows) or len(rows[0]) != width:
        raise ValueError("each neuron row must hold the values of " + ", ".join(NEURON_COLUMNS))
    if conn.dialect.name == "sqlite":  # multi-row upserts, as for samples (a ResNet has ~10^4 neurons)
        _sqlite_multirow(conn, _SQLITE_NEURON_BULK, _SQLITE_NEURON_ONE, [experiment_id], flat, width, len(rows))
    else:
        _pg_neurons(conn, [(experiment_id, *r) for r in rows])
    return len(rows)


def _pg_neurons(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: ``COPY`` neuron rows into a temporary table, then merge them with one statement."""
    with _driver_cursor(conn, _PG_NEURON) as cur:
        cur.execute(_PG_NEURON_TMP)
        with cur.copy(_PG_NEURON_COPY) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(_PG_NEURON)
        cur.execute("TRUNCATE wl_tmp_neuron_stats")


# -- PostgreSQL sample rows: one binary COPY into a staging table, one merge --------------------------------

def _pg_stage_type(column: Any) -> tuple[str, np.dtype]:
    """(SQL type, binary COPY dtype) of a statistics column in the staging table. Integer columns are staged
    as bigint: a value outside an ``integer`` column's range is then refused by the merge's assignment cast
    (as it was before binary COPY) instead of wrapping silently in numpy."""
    t = column.type
    if isinstance(t, Boolean):
        return "boolean", np.dtype("?")
    if isinstance(t, Float):
        return "double precision", np.dtype(">f8")
    return "bigint", np.dtype(">i8")


_PG_STAGE_TYPES = {c: _pg_stage_type(SampleStat.__table__.c[c]) for c in SAMPLE_COLUMNS}
_PG_STAGE = "wl_stage_sample_stats"
_PG_STAGE_CREATE = (f"CREATE TEMP TABLE IF NOT EXISTS {_PG_STAGE} ("
                    + ", ".join(f"{c} {t}" for c, (t, _) in _PG_STAGE_TYPES.items()) + ") ON COMMIT DELETE ROWS")
_PG_STAGE_TRUNCATE = f"TRUNCATE {_PG_STAGE}"
_PG_STAGE_COPY = f"COPY {_PG_STAGE} ({', '.join(SAMPLE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_SAMPLE_VALUES = [c for c in SAMPLE_COLUMNS if c not in _SAMPLE_KEY]
# Rows whose values are unchanged are left alone (no new row version, no WAL).
_PG_SAMPLE_MERGE = (
    f"INSERT INTO sample_stats ({', '.join(_SAMPLE_ALL)}) "  # noqa: S608 - constants only
    f"SELECT %s::integer, %s::varchar, {', '.join(SAMPLE_COLUMNS)} FROM {_PG_STAGE} "
    f"ON CONFLICT ({', '.join(_SAMPLE_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _SAMPLE_VALUES)
    + " WHERE (" + ", ".join(f"sample_stats.{c}" for c in _SAMPLE_VALUES) + ") IS DISTINCT FROM ("
    + ", ".join(f"excluded.{c}" for c in _SAMPLE_VALUES) + ")")
# A large write (every row of a split, each epoch) is matched in one hash join instead: the split's rows are
# read in page order and updated there (one pass over the table, no per-row index probe, no row lock
# before the update: about half the server's CPU of ON CONFLICT at 10^6 rows), then the rows not there yet
# are inserted. The join is forced (the staging table has no statistics, so the planner may otherwise pick
# a nested loop over it) and given memory for one batch; the settings are restored right after.
_PG_SAMPLE_UPDATE = (
    "UPDATE sample_stats t SET " + ", ".join(f"{c} = s.{c}" for c in _SAMPLE_VALUES)  # noqa: S608
    + f" FROM {_PG_STAGE} s WHERE t.experiment_id = %s::integer AND t.split = %s::varchar "
    "AND t.sample_id = s.sample_id")
_PG_SAMPLE_INSERT_NEW = _PG_SAMPLE_MERGE.split(" DO UPDATE ")[0] + " DO NOTHING"
_PG_JOIN_SETTINGS = {"enable_nestloop": "off", "enable_mergejoin": "off", "work_mem": "256MB"}
_PG_SETTINGS_READ = "SELECT " + ", ".join(f"current_setting('{k}')" for k in _PG_JOIN_SETTINGS)
_PG_SETTINGS_SET = "SELECT " + ", ".join(f"set_config('{k}', %s, true)" for k in _PG_JOIN_SETTINGS)
#: Rows from which a split's write is merged by a hash join (below: ON CONFLICT, an index probe per row,
#: cheaper than reading every row of a large split to update a few).
PG_HASH_MERGE_ROWS = 100_000
# The binary COPY stream's header (signature, flags, header extension length) and trailer.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
#: Rows encoded per piece of the COPY stream (bounds the memory of a 10^6-row write to a few MB).
PG_ROWS_PER_PIECE = 1 << 16


def _pg_column(values: Any, nullable: bool, kind: type) -> tuple[np.ndarray, np.ndarray | None]:
    """A column as a numpy array of its staged type and its mask of NULLs (None: none): the values and NULLs
    of :func:`_column`, without Python objects."""
    arr = np.asarray(values)
    mask = None
    if nullable and arr.dtype.kind == "f":
        nan = np.isnan(arr)
        mask = nan if nan.any() else None
    if kind is bool:
        return arr.astype(bool), mask
    if kind is float:
        return arr.astype(np.float64), mask
    return (arr if mask is None else np.where(mask, 0, arr)).astype(np.int64), mask


def _binary_tuples(values: list[np.ndarray], nulls: list[np.ndarray | None],
                   dtypes: list[np.dtype]) -> bytes:
    """Rows in PostgreSQL's binary ``COPY`` tuple format: per row a field count, then per field its length
    (-1: NULL) and its big-endian bytes. The rows of one pattern of NULLs are one fixed-width numpy record
    array, so no Python runs per row; patterns follow one another (row order is immaterial to the merge)."""
    n = len(values[0])
    pattern = np.zeros(n, np.int64)
    for j, mask in enumerate(nulls):
        if mask is not None:
            pattern |= mask.astype(np.int64) << j
    kinds = np.unique(pattern)
    parts = []
    for p in kinds.tolist():
        rows = None if len(kinds) == 1 else np.flatnonzero(pattern == p)
        fields: list[tuple[str, Any]] = [("count", ">i2")]
        for j, dtype in enumerate(dtypes):
            fields.append((f"len{j}", ">i4"))
            if not (p >> j) & 1:
                fields.append((f"val{j}", dtype))
        record = np.empty(n if rows is None else len(rows), np.dtype(fields))
        record["count"] = len(dtypes)
        for j, dtype in enumerate(dtypes):
            if (p >> j) & 1:
                record[f"len{j}"] = -1
            else:
                record[f"len{j}"] = dtype.itemsize
                record[f"val{j}"] = values[j] if rows is None else values[j][rows]
        parts.append(record.tobytes())
    return b"".join(parts)


def _pg_pieces(columns: Mapping[str, Any], n: int) -> Iterator[bytes]:
    """The binary ``COPY`` stream of the sample rows, in pieces of :data:`PG_ROWS_PER_PIECE` rows."""
    staged = [(_pg_column(columns[c], *_SAMPLE_KINDS[c]) if c != "sample_id"
               else (np.asarray(columns[c]).astype(np.int64), None)) for c in SAMPLE_COLUMNS]
    dtypes = [_PG_STAGE_TYPES[c][1] for c in SAMPLE_COLUMNS]
    yield _COPY_HEADER
    for start in range(0, n, PG_ROWS_PER_PIECE):
        piece = slice(start, start + PG_ROWS_PER_PIECE)
        yield _binary_tuples([v[piece] for v, _ in staged], [None if m is None else m[piece] for _, m in staged],
                             dtypes)
    yield _COPY_TRAILER


def _pg_samples(conn: Connection, experiment_id: int, split: str, columns: Mapping[str, Any], n: int) -> None:
    """PostgreSQL: binary ``COPY`` the rows into the staging table, merge them with one statement, empty it."""
    with _driver_cursor(conn, _PG_SAMPLE_MERGE) as cur:
        cur.execute(_PG_STAGE_CREATE)
        with cur.copy(_PG_STAGE_COPY) as copy:
            for piece in _pg_pieces(columns, n):
                copy.write(piece)
        if n < PG_HASH_MERGE_ROWS:
            cur.execute(_PG_SAMPLE_MERGE, (experiment_id, split))
        else:
            _pg_hash_merge(cur, experiment_id, split, n)
        cur.execute(_PG_STAGE_TRUNCATE)


def _pg_hash_merge(cur: Any, experiment_id: int, split: str, n: int) -> None:
    """Update the split's rows from the staging table in one hash join, then insert the rows not there yet
    (only if the UPDATE found fewer rows than were staged: sample ids are unique within a write)."""
    cur.execute(_PG_SETTINGS_READ)
    before = cur.fetchone()
    cur.execute(_PG_SETTINGS_SET, list(_PG_JOIN_SETTINGS.values()))
    cur.execute(_PG_SAMPLE_UPDATE, (experiment_id, split))  # if it fails, the rollback undoes the settings
    updated = cur.rowcount
    cur.execute(_PG_SETTINGS_SET, list(before))
    if updated < n:
        cur.execute(_PG_SAMPLE_INSERT_NEW, (experiment_id, split))


def replace_neuron_stats(conn: Connection, experiment_id: int, rows: Sequence[Sequence[Any]],
                         rewrite: Sequence[tuple[int, str]] = ()) -> None:
    """Upsert neuron rows; the (layer, split) pairs in ``rewrite`` lose their old rows first (a layer whose
    width changed: rows beyond its new width must go). One statement deletes every pair."""
    if rewrite:
        conn.execute(delete(NeuronStat).where(NeuronStat.experiment_id == experiment_id,
                                              tuple_(NeuronStat.layer_index, NeuronStat.split).in_(list(rewrite))))
    upsert_neuron_stats(conn, experiment_id, rows)
