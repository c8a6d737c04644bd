"""The event log: append-only, gap-free, hash-chained, one chain per experiment.

Appends are optimistic: the writer says which seq it believes is the last one
(``expected_last_seq``); if another writer got there first, the append fails
with :class:`ConcurrencyError` and nothing is written. The database enforces
uniqueness and gap-freedom itself (see ``schema.Event``), so even a writer that
bypasses this module cannot create a duplicate or a hole.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from weightslab.errors import ConcurrencyError, IntegrityError
from weightslab.events.codec import chain_hash, decode_payload, normalise
from weightslab.history.rows import EventRow, utc
from weightslab.history.schema import Event, Experiment

__all__ = ["ChainReport", "EventRow", "append_event", "default_actor", "read_events", "read_head", "verify_chain"]


@dataclass(frozen=True)
class ChainReport:
    """Result of verifying a hash chain, and the head it ends at (seq and hash of the latest event)."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int = 0
    head_hash: str | None = None


def default_actor() -> str:
    """``user@host`` of this process, recorded with each event."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _hashed_fields(seq: int, kind: str, payload: Any, created_at: datetime, state_hash: str | None,
                   actor: str, code_version: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": kind,
        "payload": payload,
        "created_at": utc(created_at).isoformat(timespec="microseconds"),
        "state_hash": state_hash,
        "actor": actor,
        "code_version": code_version,
    }


_EV = Event.__table__
_EXP = Experiment.__table__
# Built once: an event is appended on every operation.
_LAST = (select(_EV.c.seq, _EV.c.hash).where(_EV.c.experiment_id == bindparam("experiment_id"))
         .order_by(_EV.c.seq.desc()).limit(1))
_INSERT = _EV.insert()
_MOVE_HEAD = (update(_EXP).where(_EXP.c.experiment_id == bindparam("e"), _EXP.c.head_seq == bindparam("prev"))
              .values(head_seq=bindparam("seq"), head_hash=bindparam("h")))
_HEAD = select(_EXP.c.head_seq, _EXP.c.head_hash).where(_EXP.c.experiment_id == bindparam("e"))


def _row(e: Any) -> EventRow:
    return EventRow(
        experiment_id=e.experiment_id, seq=e.seq, kind=e.kind, payload=decode_payload(e.payload),
        created_at=utc(e.created_at), state_hash=e.state_hash, actor=e.actor,
        code_version=e.code_version, prev_hash=e.prev_hash, hash=e.hash,
    )


def append_event(
    conn: Connection,
    experiment_id: int,
    kind: str,
    payload: Mapping[str, Any],
    *,
    expected_last_seq: int,
    state_hash: str | None = None,
    actor: str | None = None,
    code_version: str = "",
    idempotency_key: str | None = None,
) -> EventRow:
    """Append one event in the caller's transaction and return it.

    Args:
        expected_last_seq: the seq the writer believes is the latest (0 for none).
        idempotency_key: a key unique to this append; repeating an append with the
            same key returns the event recorded the first time instead of a duplicate.

    Raises:
        EventPayloadError: the payload is not JSON-serialisable (nothing written).
        ConcurrencyError: another writer appended first (nothing written; re-read, retry).
    """
    clean = normalise(dict(payload))  # raises EventPayloadError before any write
    key = idempotency_key or uuid.uuid4().hex
    existing = conn.execute(
        select(_EV).where(_EV.c.experiment_id == experiment_id, _EV.c.idempotency_key == key)
    ).first() if idempotency_key else None
    if existing is not None:
        return _row(existing)
    last = conn.execute(_LAST, {"experiment_id": experiment_id}).first()
    last_seq, prev_hash = (last[0], last[1]) if last else (0, None)
    if last_seq != expected_last_seq:
        raise ConcurrencyError(
            f"experiment {experiment_id} has events up to seq {last_seq}, but this writer expected "
            f"{expected_last_seq}: another process appended to it. Reopen the experiment to "
            "continue from the latest state."
        )
    seq = last_seq + 1
    created_at = datetime.now(UTC)
    actor = actor or default_actor()
    fields = normalise(_hashed_fields(seq, kind, None, created_at, state_hash, actor, code_version))
    fields["payload"] = clean  # normalised above: the chain hash does not walk the payload again
    digest = chain_hash(fields, prev_hash, normalised=True)
    values = dict(
        experiment_id=experiment_id, seq=seq, prev_seq=seq - 1 if seq > 1 else None, kind=kind,
        payload=clean, created_at=created_at, state_hash=state_hash, actor=actor,
        code_version=code_version, idempotency_key=key, prev_hash=prev_hash, hash=digest,
    )
    try:
        if conn.dialect.name == "sqlite":  # a failed statement undoes only itself: the transaction stays usable
            conn.execute(_INSERT, values)
        else:  # PostgreSQL aborts the whole transaction on an error: keep the caller's usable
            with conn.begin_nested():
                conn.execute(_INSERT, values)
    except SAIntegrityError as e:
        taken = conn.scalar(select(_EV.c.seq).where(_EV.c.experiment_id == experiment_id, _EV.c.seq == seq))
        if taken is None:  # another constraint (or a trigger) refused the row: not a concurrent writer
            raise
        raise ConcurrencyError(
            f"another writer appended seq {seq} to experiment {experiment_id} at the same time; "
            "reopen the experiment and retry"
        ) from e
    _move_head(conn, experiment_id, last_seq, seq, digest)
    return EventRow(**{k: v for k, v in values.items() if k in EventRow.__dataclass_fields__})


def _move_head(conn: Connection, experiment_id: int, prev: int, seq: int, digest: str) -> None:
    """Anchor the new head on the experiment's row (same transaction as the event)."""
    if conn.execute(_MOVE_HEAD, {"e": experiment_id, "prev": prev, "seq": seq, "h": digest}).rowcount == 1:
        return
    head = conn.execute(_HEAD, {"e": experiment_id}).first()
    raise IntegrityError(
        f"experiment {experiment_id}'s log ends at seq {prev}, but its head says seq {head[0] if head else '?'}: "
        "events were deleted from the store. Nothing was written; run `weightslab audit` and restore the "
        "store from a backup")


def read_head(conn: Connection, experiment_id: int) -> tuple[int, str | None]:
    """The head anchored on the experiment's row: (seq, hash) of its latest event."""
    row = conn.execute(_HEAD, {"e": experiment_id}).first()
    return (int(row[0]), row[1]) if row is not None else (0, None)


def read_events(
    conn: Connection, experiment_id: int, from_seq: int = 1, to_seq: int | None = None
) -> list[EventRow]:
    """Events of one experiment with ``from_seq <= seq <= to_seq``, in order."""
    q = select(_EV).where(_EV.c.experiment_id == experiment_id, _EV.c.seq >= from_seq)
    if to_seq is not None:
        q = q.where(_EV.c.seq <= to_seq)
    return [_row(e) for e in conn.execute(q.order_by(_EV.c.seq))]


def verify_chain(conn: Connection, experiment_id: int) -> ChainReport:
    """Recompute every hash of an experiment's chain; name the first bad seq.

    Detects an edited event (its hash no longer matches its content), a deleted
    event (a gap in seq, or the next event's prev_hash no longer matching),
    reordered events (seq and prev_hash disagree), and a log cut short or extended
    behind WeightsLab's back (it no longer ends at the head anchored on the
    experiment's row).
    """
    head_seq, head_hash = read_head(conn, experiment_id)
    prev_hash: str | None = None
    expected = 1
    count = 0
    for e in conn.execute(select(_EV).where(_EV.c.experiment_id == experiment_id).order_by(_EV.c.seq)):
        count += 1
        if e.seq != expected:
            return ChainReport(False, count, expected, f"seq {expected} is missing (next is {e.seq})",
                               head_seq, head_hash)
        if e.prev_hash != prev_hash:
            return ChainReport(False, count, e.seq, "prev_hash does not match the previous event's hash",
                               head_seq, head_hash)
        fields = _hashed_fields(e.seq, e.kind, normalise(decode_payload(e.payload)), e.created_at, e.state_hash,
                                e.actor, e.code_version)
        if chain_hash(fields, prev_hash) != e.hash:
            return ChainReport(False, count, e.seq, "content does not match its hash (edited)", head_seq, head_hash)
        prev_hash = e.hash
        expected += 1
    if (count, prev_hash) != (head_seq, head_hash):
        return ChainReport(False, count, count + 1, (
            f"the log ends at seq {count}, but its head (anchored with every append) is seq {head_seq}: "
            f"{'events were deleted from its end' if head_seq > count else 'the head was changed'}"),
            head_seq, head_hash)
    return ChainReport(True, count, head_seq=head_seq, head_hash=head_hash)
