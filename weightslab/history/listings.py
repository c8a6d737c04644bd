"""What a store holds, listed for people: the experiments and their counts (``weightslab experiments``).

Apart from :mod:`weightslab.history.audit` so that listing a store loads neither the event classes nor
the log walker; rows, not DataFrames, so that it loads no pandas
(:func:`weightslab.history.audit.experiments_frame` is the DataFrame).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from weightslab.history.rows import Rows
from weightslab.history.schema import Checkpoint, Event, Experiment

if TYPE_CHECKING:
    from weightslab.history.store import Store

__all__ = ["EXPERIMENT_COLUMNS", "experiments_rows", "utc"]

EXPERIMENT_COLUMNS = ["experiment_id", "name", "created_at", "events", "checkpoints", "last_event_at"]


def experiments_rows(store: Store) -> Rows:
    """One row per experiment: id, name, creation time (UTC), number of events and checkpoints, last event time.

    Example:
        >>> experiments_rows(Store.open("./store", read_only=True)).select(["name", "events"]).rows
        [('x0', 16)]
    """
    ev = Event.__table__
    ck = Checkpoint.__table__
    ex = Experiment.__table__
    n_events = select(func.count()).where(ev.c.experiment_id == ex.c.experiment_id).scalar_subquery()
    last = select(func.max(ev.c.created_at)).where(ev.c.experiment_id == ex.c.experiment_id).scalar_subquery()
    n_ckpt = select(func.count()).where(ck.c.experiment_id == ex.c.experiment_id).scalar_subquery()
    q = select(ex.c.experiment_id, ex.c.name, ex.c.created_at, n_events.label("events"),
               n_ckpt.label("checkpoints"), last.label("last_event_at")).order_by(ex.c.experiment_id)
    with store.reading() as conn:
        rows = conn.execute(q).all()
    return Rows(list(EXPERIMENT_COLUMNS), [(*r[:2], utc(r[2]), *r[3:5], utc(r[5])) for r in rows])


def utc(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored in UTC); make every time zone-aware UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
