"""The event timeline: newest first, filterable by kind, each event with its payload, hashes and badge.

The badge says whether the event is covered by a verified audit
(:class:`~weightslab.ui.audits.Audits`, the latest finished one): *verified* when
it passed; when the hash chain breaks at seq N, the events from N on are *not
verified*; a blob problem fails the events that name the blob; *auditing* for the
events after the head that audit reached (or all, before the first one ends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from weightslab.history.audit import AuditReport
from weightslab.history.log import Log, LogEntry
from weightslab.ui.values import as_utc

__all__ = ["PAGE_SIZE", "EventView", "TimelinePage", "timeline"]

PAGE_SIZE = 50


@dataclass(frozen=True)
class EventView:
    seq: int
    created_at: datetime | None
    kind: str
    summary: str
    actor: str
    code_version: str
    state_hash: str | None
    prev_hash: str | None
    hash: str
    payload: str  # indented JSON
    badge: str  # "verified", "not verified", "auditing"


@dataclass(frozen=True)
class TimelinePage:
    events: list[EventView]
    kinds: list[str]  # every kind in the log, for the filter
    selected: list[str]  # the kinds shown (empty: all)
    matching: int  # events of the selected kinds
    page: int
    pages: int


def timeline(log: Log, kinds: list[str], page: int, audit: AuditReport | None) -> TimelinePage:
    """Page ``page`` (from 1) of the events of ``kinds`` (all when empty), newest first."""
    all_kinds = sorted({e.kind for e in log})
    selected = [k for k in kinds if k in all_kinds]
    entries = [e for e in reversed(log.entries) if not selected or e.kind in selected]
    pages = max(1, -(-len(entries) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = entries[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    return TimelinePage([_view(e, _badge(e, audit)) for e in shown], all_kinds, selected, len(entries), page, pages)


def _view(e: LogEntry, badge: str) -> EventView:
    r = e.record
    return EventView(e.seq, as_utc(r.created_at), e.kind, e.event.summary(), r.actor, r.code_version, r.state_hash,
                     r.prev_hash, r.hash, json.dumps(e.event.to_payload(), indent=1, sort_keys=True,
                                                     ensure_ascii=False, default=str), badge)


def _badge(e: LogEntry, audit: AuditReport | None) -> str:
    if audit is None or e.seq > audit.head_seq:
        return "auditing"
    if audit.first_bad_seq is not None and e.seq >= audit.first_bad_seq:
        return "not verified"
    if audit.bad_blob is not None and _names(e, audit.bad_blob):
        return "not verified"
    if not audit.chain_ok:
        return "not verified"
    return "verified"


def _names(e: LogEntry, blob: str) -> bool:
    event: Any = e.event
    return blob in event.blobs.values() or blob in event.manifests()
