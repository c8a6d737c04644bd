"""Export: an experiment's tables as Parquet files, and query results as CSV or Parquet.

``export_experiment`` writes, for one experiment, ``events.parquet`` (the log,
payloads as canonical JSON text), ``sample_stats.parquet`` and
``neuron_stats.parquet`` (the statistics tables as of the last event) and
``sample_history.parquet`` (every ``sample_history`` snapshot, concatenated in
event order, with the seq of the snapshot that held each row). Files are
written next to their final name and renamed into place, so a reader never
sees half a file. Nothing is written to the store; no torch.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import BigInteger, Boolean, Float, Integer, select

from weightslab.errors import ConfigurationError
from weightslab.events.codec import canonical_json
from weightslab.history.audit import events_frame
from weightslab.history.schema import NeuronStat, SampleStat, Snapshot
from weightslab.history.store import Store

__all__ = ["ExportedFile", "export_experiment", "json_cells", "sample_history_frame", "table_frame", "write_table"]


@dataclass(frozen=True)
class ExportedFile:
    """One file written by :func:`export_experiment`."""

    table: str
    path: Path
    rows: int


def export_experiment(store: Store, name: str, outdir: str | os.PathLike[str]) -> list[ExportedFile]:
    """Write experiment ``name``'s events, statistics and sample history as Parquet files in ``outdir``.

    ``outdir`` is created if needed; files of the same names in it are replaced.

    Raises:
        UnknownExperimentError: no such experiment (nothing is written).
        ConfigurationError: ``outdir`` cannot be created or written.
        IntegrityError: a snapshot blob is missing or damaged (named).

    Example:
        >>> [f.path.name for f in export_experiment(store, "x0", "out/")]
        ['events.parquet', 'sample_stats.parquet', 'neuron_stats.parquet', 'sample_history.parquet']
    """
    exp = store.get_experiment(name)
    events = events_frame(store, name)
    frames = {
        "events": events.assign(payload=[canonical_json(p) for p in events["payload"]]),
        "sample_stats": table_frame(store, SampleStat.__table__, exp.experiment_id),
        "neuron_stats": table_frame(store, NeuronStat.__table__, exp.experiment_id),
        "sample_history": sample_history_frame(store, name),
    }
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(f"cannot create the output directory {out}: {e}") from e
    written = []
    for table, frame in frames.items():
        path = write_table(frame, out / f"{table}.parquet")
        written.append(ExportedFile(table, path, len(frame)))
    return written


def table_frame(store: Store, table: Any, experiment_id: int) -> pd.DataFrame:
    """The rows of a statistics table for one experiment, with nullable dtypes where SQL has NULLs."""
    key = [c for c in table.primary_key.columns]
    with store.reading() as conn:
        rows = conn.execute(select(table).where(table.c.experiment_id == experiment_id).order_by(*key)).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[c.name for c in table.columns])
    dtypes: dict[str, Any] = {}
    for c in table.columns:
        if isinstance(c.type, Boolean):
            dtypes[c.name] = "boolean"
        elif isinstance(c.type, Integer | BigInteger):
            dtypes[c.name] = "Int64"
        elif isinstance(c.type, Float):
            dtypes[c.name] = "float64"
    return frame.astype(dtypes)


def sample_history_frame(store: Store, name: str) -> pd.DataFrame:
    """Every ``sample_history`` snapshot of experiment ``name``, concatenated in event order.

    A column ``snapshot_seq`` tells which snapshot (the event seq it was taken at) held each row.
    """
    exp = store.get_experiment(name)
    with store.reading() as conn:
        snaps = conn.execute(select(Snapshot.snapshot_id, Snapshot.event_seq)
                             .where(Snapshot.experiment_id == exp.experiment_id,
                                    Snapshot.table_name == "sample_history")
                             .order_by(Snapshot.event_seq, Snapshot.snapshot_id)).all()
    parts = [store.read_snapshot(sid).assign(snapshot_seq=seq) for sid, seq in snaps]
    if not parts:
        return pd.DataFrame({"snapshot_seq": pd.Series([], dtype="int64")})
    return pd.concat(parts, ignore_index=True)


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` to ``path`` as CSV (``.csv``) or Parquet (``.parquet``); returns the path.

    Dict and list cells (JSON payloads) are written as JSON text.

    Raises:
        ConfigurationError: another extension, or the file cannot be written.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigurationError(f"cannot write {target}: give a file name ending in .csv or .parquet")
    flat = json_cells(frame)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        if suffix == ".csv":
            flat.to_csv(tmp, index=False)
        else:
            pq.write_table(pa.Table.from_pandas(flat, preserve_index=False), tmp, compression="zstd")
        os.replace(tmp, target)
    except (OSError, pa.ArrowException) as e:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {target}: {e}") from e
    return target


def json_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with dict and list cells (JSON payloads) as canonical JSON text (for CSV and Parquet)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, dict | list)).any():
            out[col] = out[col].map(lambda v: canonical_json(v) if isinstance(v, dict | list) else v)
    return out
