"""Bulk upserts of the statistics tables (``sample_stats``, ``neuron_stats``).

Statistics are flushed at event boundaries, tens of thousands of rows at a
time, so the rows go in bulk. On SQLite, sample (and neuron) rows go as multi-row
``INSERT ... VALUES (…), (…), … ON CONFLICT DO UPDATE`` statements of
:data:`SQLITE_ROWS_PER_STATEMENT` rows: the parameters are one flat list built
column by column (no per-row Python tuples) and each statement's upserts run
inside SQLite without Python's GIL, so a background flush overlaps training
(benchmarked at about half the CPU of staging through a temporary table).
On PostgreSQL rows are ``COPY``'d into a temporary table and merged with one
``INSERT ... SELECT ... ON CONFLICT``. Values are always bound parameters,
never formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import Boolean, Connection, Float, delete, tuple_

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
_PG_SAMPLE = _merge_sql("sample_stats", _SAMPLE_ALL, _SAMPLE_KEY, "wl_tmp_sample_stats")
_PG_NEURON = _merge_sql("neuron_stats", _NEURON_ALL, _NEURON_KEY, "wl_tmp_neuron_stats")
_PG_TMP = {
    "sample_stats": "CREATE TEMP TABLE IF NOT EXISTS wl_tmp_sample_stats "
                    "(LIKE sample_stats INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "neuron_stats": "CREATE TEMP TABLE IF NOT EXISTS wl_tmp_neuron_stats "
                    "(LIKE neuron_stats INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
}
_PG_COPY = {
    "sample_stats": f"COPY wl_tmp_sample_stats ({', '.join(_SAMPLE_ALL)}) FROM STDIN",
    "neuron_stats": f"COPY wl_tmp_neuron_stats ({', '.join(_NEURON_ALL)}) FROM STDIN",
}
_PG_TRUNCATE = {"sample_stats": "TRUNCATE wl_tmp_sample_stats", "neuron_stats": "TRUNCATE wl_tmp_neuron_stats"}


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
    cols = [_column(columns[c], *_SAMPLE_KINDS[c]) for c in SAMPLE_COLUMNS]
    if conn.dialect.name == "sqlite":
        _sqlite_samples(conn, experiment_id, split, cols, n)
    else:
        _bulk(conn, "sample_stats", list(zip([experiment_id] * n, [split] * n, *cols)))
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
    driver = conn.connection.driver_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        if full:
            cur.executemany(bulk, (head + flat[i * width:(i + k) * width] for i in range(0, full, k)))
        if full < n:
            cur.executemany(one, (head + flat[i * width:(i + 1) * width] for i in range(full, n)))
    finally:
        cur.close()


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
        _bulk(conn, "neuron_stats", [(experiment_id, *r) for r in rows])
    return len(rows)


def _bulk(conn: Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: ``COPY`` the rows into a temporary table, then merge them with one statement."""
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cur:
        cur.execute(_PG_TMP[table])
        with cur.copy(_PG_COPY[table]) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(_PG_SAMPLE if table == "sample_stats" else _PG_NEURON)
        cur.execute(_PG_TRUNCATE[table])


def replace_neuron_stats(conn: Connection, experiment_id: int, rows: Sequence[Sequence[Any]],
                         rewrite: Sequence[tuple[int, str]] = ()) -> None:
    """Upsert neuron rows; the (layer, split) pairs in ``rewrite`` lose their old rows first (a layer whose
    width changed: rows beyond its new width must go). One statement deletes every pair."""
    if rewrite:
        conn.execute(delete(NeuronStat).where(NeuronStat.experiment_id == experiment_id,
                                              tuple_(NeuronStat.layer_index, NeuronStat.split).in_(list(rewrite))))
    upsert_neuron_stats(conn, experiment_id, rows)
