"""What a store holds, listed for people: the experiments and their counts (``weightslab experiments``), an
experiment's events (``weightslab events``).

Apart from :mod:`weightslab.history.audit` so that listing a store loads no pandas (rows, not DataFrames:
:func:`weightslab.history.audit.experiments_frame` and ``events_frame`` are the DataFrames), and no
SQLAlchemy when the store is read by the direct reader (:mod:`weightslab.history.direct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from weightslab.errors import ConfigurationError
from weightslab.history.direct import DirectReader
from weightslab.history.rows import Rows
from weightslab.history.rows import utc as _aware

if TYPE_CHECKING:
    from weightslab.history.log import Log, LogEntry
    from weightslab.history.store import Store

__all__ = ["EVENT_COLUMNS", "EXPERIMENT_COLUMNS", "check_seq_range", "events_rows", "experiments_rows", "log_rows",
           "utc"]

EXPERIMENT_COLUMNS = ["experiment_id", "name", "created_at", "events", "checkpoints", "last_event_at"]
EVENT_COLUMNS = ["seq", "created_at", "kind", "summary", "actor", "code_version",
                 "state_hash", "prev_hash", "hash", "payload"]


def experiments_rows(store: Store | DirectReader) -> Rows:
    """One row per experiment: id, name, creation time (UTC), number of events and checkpoints, last event time.

    Example:
        >>> experiments_rows(Store.open("./store", read_only=True)).select(["name", "events"]).rows
        [('x0', 16)]
    """
    rows = store.experiments_rows() if isinstance(store, DirectReader) else _experiments_rows(store)
    return Rows(list(EXPERIMENT_COLUMNS), [(*r[:2], utc(r[2]), *r[3:5], utc(r[5])) for r in rows])


def _experiments_rows(store: Store) -> list[Any]:
    from sqlalchemy import func, select

    from weightslab.history.schema import Checkpoint, Event, Experiment

    ev = Event.__table__
    ck = Checkpoint.__table__
    ex = Experiment.__table__
    n_events = select(func.count()).where(ev.c.experiment_id == ex.c.experiment_id).scalar_subquery()
    last = select(func.max(ev.c.created_at)).where(ev.c.experiment_id == ex.c.experiment_id).scalar_subquery()
    n_ckpt = select(func.count()).where(ck.c.experiment_id == ex.c.experiment_id).scalar_subquery()
    q = select(ex.c.experiment_id, ex.c.name, ex.c.created_at, n_events.label("events"),
               n_ckpt.label("checkpoints"), last.label("last_event_at")).order_by(ex.c.experiment_id)
    with store.reading() as conn:
        return list(conn.execute(q).all())


def events_rows(store: Store | DirectReader, name: str, from_seq: int | None = None,
                to_seq: int | None = None) -> Rows:
    """:func:`weightslab.history.audit.events_frame` as plain rows, without pandas (the same errors)."""
    from weightslab.history.log import walk  # the event classes: `weightslab experiments` does without them

    log = walk(store, name, strict=False)
    check_seq_range(name, log.last_seq, from_seq, to_seq)
    lo, hi = from_seq or 1, to_seq or log.last_seq
    return log_rows([e for e in log if lo <= e.seq <= hi])


def log_rows(entries: Sequence[LogEntry] | Log) -> Rows:
    """:func:`weightslab.history.audit.log_frame` as plain rows, without pandas."""
    return Rows(list(EVENT_COLUMNS), [
        (e.seq, e.record.created_at, e.kind, e.event.summary(), e.record.actor, e.record.code_version,
         e.record.state_hash, e.record.prev_hash, e.record.hash, e.event.to_payload())
        for e in entries])


def check_seq_range(name: str, last: int, from_seq: int | None, to_seq: int | None) -> None:
    """Refuse a ``--from``/``--to`` outside the experiment's events, or a range that ends before it starts."""
    span = f"events 1..{last}" if last else "no events"
    for label, seq in (("from", from_seq), ("to", to_seq)):
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= last):
            raise ConfigurationError(f"--{label} seq {seq!r} is not in experiment {name!r}, which has {span}")
    if from_seq is not None and to_seq is not None and from_seq > to_seq:
        raise ConfigurationError(f"--from seq {from_seq} is after --to seq {to_seq}; give from ≤ to")


def utc(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored in UTC); make every time zone-aware UTC."""
    return None if ts is None else _aware(ts)
