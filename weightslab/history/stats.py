"""Bulk upserts of the statistics tables (``sample_stats``, ``neuron_stats``).

Statistics are flushed at event boundaries, tens of thousands of rows at a
time, so the rows go in bulk: one ``executemany`` of an ``INSERT ... ON
CONFLICT DO UPDATE`` on SQLite (sqlite3 runs it in C), ``COPY`` into a
temporary table followed by one ``INSERT ... SELECT ... ON CONFLICT`` on
PostgreSQL. Values are always bound parameters, never formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection

__all__ = ["NEURON_COLUMNS", "SAMPLE_COLUMNS", "upsert_neuron_stats", "upsert_sample_stats"]

SAMPLE_COLUMNS = (
    "sample_id", "prediction_age", "prediction_loss", "exposure_amount", "deny_listed", "prediction", "label",
)
NEURON_COLUMNS = ("layer_index", "neuron_index", "split", "layer_name", "trigger_count", "seen_samples")

_SAMPLE_KEY = ("experiment_id", "split", "sample_id")
_NEURON_KEY = ("experiment_id", "layer_index", "neuron_index", "split")


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str], placeholder: str, source: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    cols = ", ".join(columns)
    if source:
        return (f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source} "  # noqa: S608 - constants only
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")
    values = ", ".join([placeholder] * len(columns))
    return (f"INSERT INTO {table} ({cols}) VALUES ({values}) "  # noqa: S608 - constants only
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


# Statements built once from constant identifiers; every value is a bound parameter.
_SAMPLE_ALL = ("experiment_id", "split", *SAMPLE_COLUMNS)
_NEURON_ALL = ("experiment_id", *NEURON_COLUMNS)
_SQLITE_SAMPLE = _upsert_sql("sample_stats", _SAMPLE_ALL, _SAMPLE_KEY, "?", "")
# Large SQLite batches are staged: a plain insert into an unindexed temporary table, then one
# INSERT ... SELECT ... ON CONFLICT that runs entirely inside SQLite (without Python's GIL, so a
# background flush overlaps with training) - the same shape as PostgreSQL's COPY + merge.
_SQLITE_STAGE_MIN_ROWS = 2_000
_SQLITE_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS wl_stage_sample_stats AS "  # noqa: S608 - constants only
                 "SELECT " + ", ".join(_SAMPLE_ALL) + " FROM sample_stats WHERE 0")
_SQLITE_STAGE_INSERT = ("INSERT INTO wl_stage_sample_stats (" + ", ".join(_SAMPLE_ALL)  # noqa: S608 - constants
                        + ") VALUES (" + ", ".join("?" * len(_SAMPLE_ALL)) + ")")
_SQLITE_MERGE = _upsert_sql("sample_stats", _SAMPLE_ALL, _SAMPLE_KEY, "", "wl_stage_sample_stats WHERE true")
_SQLITE_STAGE_CLEAR = "DELETE FROM wl_stage_sample_stats"
_SQLITE_NEURON = _upsert_sql("neuron_stats", _NEURON_ALL, _NEURON_KEY, "?", "")
_PG_SAMPLE = _upsert_sql("sample_stats", _SAMPLE_ALL, _SAMPLE_KEY, "", "wl_tmp_sample_stats")
_PG_NEURON = _upsert_sql("neuron_stats", _NEURON_ALL, _NEURON_KEY, "", "wl_tmp_neuron_stats")
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
    if nullable and arr.dtype.kind == "f":
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


_SAMPLE_KINDS = {
    "sample_id": (False, int), "prediction_age": (True, int), "prediction_loss": (True, float),
    "exposure_amount": (False, int), "deny_listed": (False, bool), "prediction": (True, int),
    "label": (True, int),
}


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
    rows = list(zip([experiment_id] * n, [split] * n, *cols))
    _bulk(conn, "sample_stats", rows)
    return n


def upsert_neuron_stats(conn: Connection, experiment_id: int, rows: Sequence[Sequence[Any]]) -> int:
    """Insert or update neuron rows given as tuples in :data:`NEURON_COLUMNS` order."""
    if not rows:
        return 0
    _bulk(conn, "neuron_stats", [(experiment_id, *r) for r in rows])
    return len(rows)


def _bulk(conn: Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    driver = conn.connection.driver_connection
    assert driver is not None
    if conn.dialect.name == "sqlite":
        cur = driver.cursor()
        try:
            if table == "sample_stats" and len(rows) >= _SQLITE_STAGE_MIN_ROWS:
                cur.execute(_SQLITE_STAGE)
                cur.executemany(_SQLITE_STAGE_INSERT, rows)
                cur.execute(_SQLITE_MERGE)
                cur.execute(_SQLITE_STAGE_CLEAR)
            else:
                cur.executemany(_SQLITE_SAMPLE if table == "sample_stats" else _SQLITE_NEURON, rows)
        finally:
            cur.close()
        return
    with driver.cursor() as cur:
        cur.execute(_PG_TMP[table])
        with cur.copy(_PG_COPY[table]) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(_PG_SAMPLE if table == "sample_stats" else _PG_NEURON)
        cur.execute(_PG_TRUNCATE[table])
