"""Parquet snapshots of a table's rows, stored as blobs and registered in SQL.

A snapshot is the Parquet bytes of a DataFrame (written with pyarrow), kept as
a content-addressed blob (so it is verified on read and reachable wherever the
store's blobs are) and registered in the ``snapshots`` table with the event
seq it reflects. ``weightslab export`` writes them out as named files.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Connection

from weightslab.errors import IntegrityError
from weightslab.history.blobs import BlobStore
from weightslab.history.schema import Snapshot

__all__ = ["SnapshotWriter", "parquet_bytes", "read_parquet_bytes", "register_snapshot"]


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Encode a DataFrame as Parquet (zstd), index kept as a column if named.

    Numeric columns with many distinct values skip Parquet's dictionary (it would overflow and fall
    back to plain values anyway): floats are written byte-stream-split (their exponent bytes then
    compress), integers delta-bit-packed (a column of ids in order costs almost nothing, ids in a
    random order their bit width). Columns of few distinct values (ages, counts, classes, the split)
    keep the dictionary. The values and types read back are the same; only the bytes are fewer
    (after an epoch of 10^6 samples: ``sample_stats`` 7.6 → 5.4 B/row, ``sample_history`` 8.1 → 6.5; docs/dumps.md).
    """
    table = pa.Table.from_pandas(frame, preserve_index=frame.index.name is not None)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", **_encodings(table))
    return buf.getvalue()


_PROBE = 4096  # values looked at to tell a column of few distinct values (counting them all costs seconds)


def _encodings(table: pa.Table) -> dict[str, Any]:
    """``write_table`` options: which columns keep the dictionary, and the others' encodings.

    A column has many distinct values when :data:`_PROBE` evenly spaced ones hold more than 1/16 distinct.
    """
    import numpy as np
    import pyarrow.compute as pc

    encodings: dict[str, str] = {}
    n = table.num_rows
    probe = pa.array(np.linspace(0, n - 1, min(n, _PROBE)).astype(np.int64)) if n >= 1024 else None
    for field, column in zip(table.schema, table.columns):
        numeric = pa.types.is_floating(field.type) or pa.types.is_integer(field.type)
        if numeric and probe is not None and pc.count_distinct(column.take(probe)).as_py() > len(probe) // 16:
            encodings[field.name] = "BYTE_STREAM_SPLIT" if pa.types.is_floating(field.type) else "DELTA_BINARY_PACKED"
    if not encodings:
        return {}
    return {"use_dictionary": [n for n in table.column_names if n not in encodings], "column_encoding": encodings}


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    """Decode Parquet bytes to a DataFrame; damaged bytes raise IntegrityError."""
    try:
        return pq.read_table(io.BytesIO(data)).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise IntegrityError(f"snapshot is not readable Parquet ({e}); the store may be damaged") from e


def register_snapshot(
    conn: Connection, blobs: BlobStore, experiment_id: int, table_name: str, event_seq: int,
    frame: pd.DataFrame,
) -> int:
    """Store ``frame`` as a Parquet blob and register it; returns the snapshot id."""
    (digest,) = blobs.put_many(conn, [parquet_bytes(frame)])
    return _register(conn, experiment_id, table_name, event_seq, digest, len(frame))


def _register(conn: Connection, experiment_id: int, table_name: str, event_seq: int, blob_hash: str,
              rows: int) -> int:
    result = conn.execute(
        Snapshot.__table__.insert().values(
            experiment_id=experiment_id, table_name=table_name, event_seq=event_seq,
            blob_hash=blob_hash, rows=rows, created_at=datetime.now(UTC),
        ).returning(Snapshot.__table__.c.snapshot_id)
    )
    return int(result.scalar_one())


class SnapshotWriter:
    """Writes one experiment's snapshots, remembering what each table's last snapshot held.

    The caller names the rows by a digest of the arrays they are built from. When a
    table's digest equals that of its last snapshot and the store still has that
    snapshot's blob, the new snapshot row names the same Parquet blob: nothing is
    encoded, hashed or written again (a dump right after a load or an edit of the
    model leaves the statistics as they were).
    """

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._last: dict[str, tuple[str, str, int]] = {}  # table -> (rows digest, blob hash, row count)

    def write(self, conn: Connection, experiment_id: int, table_name: str, event_seq: int, rows_digest: str,
              build: Callable[[], pd.DataFrame]) -> int:
        """Register a snapshot of ``table_name`` (``build()`` gives its frame); returns the snapshot id."""
        last = self._last.get(table_name)
        # the blob check also covers a transaction that rolled back after the last write
        if last is not None and last[0] == rows_digest and self._blobs.known(conn, last[1]):
            _, blob_hash, rows = last
        else:
            frame = build()
            (blob_hash,) = self._blobs.put_many(conn, [parquet_bytes(frame)])
            rows = len(frame)
        self._last[table_name] = (rows_digest, blob_hash, rows)
        return _register(conn, experiment_id, table_name, event_seq, blob_hash, rows)
