"""The ``requests`` table: a queue of edits asked of an experiment from outside its process.

Anyone who reaches the store files a request (:func:`file_request`: the CLI's
``weightslab request``, the UI's buttons); the process that holds the experiment
applies the pending ones at its safe points (``experiment/requests.py``). Its
moves, each one UPDATE guarded by the status it expects (so two processes never
both take one request, on SQLite and PostgreSQL alike):

    pending ──claim──> applying ──(event + applied, one transaction)──> applied
       │                   └──refuse──> refused (the API's message in ``error``)
       └──cancel──> cancelled            (and back to pending if the process failed mid-way)

A safe point costs one indexed probe (:func:`next_pending`, index ``ix_requests_queue``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select, update

from weightslab.events.codec import decode_payload, normalise
from weightslab.history.schema import Request

__all__ = ["FINAL", "RequestRow", "Status", "cancel", "claim", "file_request", "finish", "get",
           "list_requests", "next_pending", "release", "release_stale", "requests_frame"]

_RQ = cast(Table, Request.__table__)


class Status:
    """The values of ``requests.status``."""

    PENDING = "pending"
    APPLYING = "applying"
    APPLIED = "applied"
    REFUSED = "refused"
    CANCELLED = "cancelled"


#: The statuses a request never leaves.
FINAL = frozenset({Status.APPLIED, Status.REFUSED, Status.CANCELLED})

ERROR_CHARS = 2000  # the width of requests.error: longer messages are cut


@dataclass(frozen=True)
class RequestRow:
    """One row of ``requests``."""

    request_id: int
    experiment_id: int
    kind: str
    payload: dict[str, Any]
    requested_by: str
    requested_at: datetime
    status: str
    applied_seq: int | None
    error: str | None
    finished_at: datetime | None

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _row(r: Any) -> RequestRow:
    return RequestRow(r.request_id, r.experiment_id, r.kind, decode_payload(r.payload), r.requested_by,
                      _utc(r.requested_at) or r.requested_at, r.status, r.applied_seq, r.error,
                      _utc(r.finished_at))


# Built once: a safe point runs this on every public call of a running experiment.
_NEXT = (select(_RQ.c.request_id).where(_RQ.c.experiment_id == bindparam("e"), _RQ.c.status == Status.PENDING)
         .order_by(_RQ.c.request_id).limit(1))
_MOVE = (update(_RQ).where(_RQ.c.request_id == bindparam("rid"), _RQ.c.status == bindparam("was"))
         .values(status=bindparam("now")))


def file_request(conn: Connection, experiment_id: int, kind: str, payload: dict[str, Any],
                 requested_by: str) -> RequestRow:
    """Insert a pending request (its payload already checked by ``events.requests.check_request``)."""
    result = conn.execute(_RQ.insert().values(
        experiment_id=experiment_id, kind=kind, payload=normalise(dict(payload), "request payload"),
        requested_by=requested_by[:200], requested_at=datetime.now(UTC), status=Status.PENDING))
    rid = result.inserted_primary_key[0] if result.inserted_primary_key else None
    return _row(conn.execute(select(_RQ).where(_RQ.c.request_id == rid)).one())


def get(conn: Connection, request_id: int) -> RequestRow | None:
    r = conn.execute(select(_RQ).where(_RQ.c.request_id == request_id)).first()
    return None if r is None else _row(r)


def list_requests(conn: Connection, experiment_id: int, status: str | None = None) -> list[RequestRow]:
    """An experiment's requests in the order they were filed (optionally of one status)."""
    q = select(_RQ).where(_RQ.c.experiment_id == experiment_id)
    if status is not None:
        q = q.where(_RQ.c.status == status)
    return [_row(r) for r in conn.execute(q.order_by(_RQ.c.request_id))]


def next_pending(conn: Connection, experiment_id: int) -> int | None:
    """The id of the experiment's oldest pending request, or None: the one query of a safe point."""
    return conn.execute(_NEXT, {"e": experiment_id}).scalar()


def claim(conn: Connection, request_id: int) -> RequestRow | None:
    """Move a pending request to ``applying``; None if it is no longer pending (another process claimed it,
    or its author cancelled it): the UPDATE's row count decides, so exactly one claimer wins."""
    moved = conn.execute(_MOVE, {"rid": request_id, "was": Status.PENDING, "now": Status.APPLYING}).rowcount
    return get(conn, request_id) if moved == 1 else None


def finish(conn: Connection, request_id: int, status: str, *, applied_seq: int | None = None,
           error: str | None = None) -> bool:
    """Move a request being applied to ``applied`` (with the seq of its event) or ``refused`` (with why);
    False if it was not being applied."""
    values: dict[str, Any] = {"status": status, "applied_seq": applied_seq, "finished_at": datetime.now(UTC)}
    if error is not None:
        values["error"] = error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS - 1] + "…"
    stmt = update(_RQ).where(_RQ.c.request_id == request_id, _RQ.c.status == Status.APPLYING).values(**values)
    return conn.execute(stmt).rowcount == 1


def release(conn: Connection, request_id: int) -> None:
    """Put a request being applied back in the queue (the store failed while applying it)."""
    conn.execute(_MOVE, {"rid": request_id, "was": Status.APPLYING, "now": Status.PENDING})


def release_stale(conn: Connection, experiment_id: int) -> int:
    """Put back every request of the experiment left ``applying`` (its process died before the event
    committed, so it was not applied); returns how many. Run by the process that opens the experiment."""
    stmt = (update(_RQ).where(_RQ.c.experiment_id == experiment_id, _RQ.c.status == Status.APPLYING)
            .values(status=Status.PENDING))
    return int(conn.execute(stmt).rowcount)


def cancel(conn: Connection, request_id: int) -> bool:
    """Cancel a pending request; False if it is not pending any more."""
    stmt = (update(_RQ).where(_RQ.c.request_id == request_id, _RQ.c.status == Status.PENDING)
            .values(status=Status.CANCELLED, finished_at=datetime.now(UTC)))
    return conn.execute(stmt).rowcount == 1


def requests_frame(rows: list[RequestRow]) -> Any:
    """Requests as a DataFrame (what ``weightslab requests`` prints): id, kind, arguments, status, seq of the
    event it became, who asked and when, why it was refused."""
    import pandas as pd

    columns = ["request_id", "kind", "payload", "status", "applied_seq", "requested_by", "requested_at", "error",
               "finished_at"]
    return pd.DataFrame([[getattr(r, c) for c in columns] for r in rows], columns=columns, dtype=object)
