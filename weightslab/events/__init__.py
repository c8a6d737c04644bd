"""Events: typed domain events, their canonical encoding, and the operation records (no torch, no SQL).

The names are loaded on first use, so that a module needing only the encoding (``events.codec``) does
not build every event class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from weightslab.lazy import lazy_getattr

__all__ = [
    "EVENT_CLASSES",
    "DomainEvent",
    "EventKind",
    "OperationRecord",
    "RecordedEvent",
    "canonical_json",
    "chain_hash",
    "decode",
    "decode_payload",
    "event_class",
]

_EXPORTS = {"canonical_json": "codec", "chain_hash": "codec", "decode_payload": "codec",
            "EVENT_CLASSES": "domain", "DomainEvent": "domain", "EventKind": "domain", "RecordedEvent": "domain",
            "decode": "domain", "event_class": "domain", "OperationRecord": "record"}


__getattr__ = lazy_getattr("weightslab.events", _EXPORTS, globals())


if TYPE_CHECKING:  # pragma: no cover
    from weightslab.events.codec import canonical_json, chain_hash, decode_payload
    from weightslab.events.domain import (
        EVENT_CLASSES,
        DomainEvent,
        EventKind,
        RecordedEvent,
        decode,
        event_class,
    )
    from weightslab.events.record import OperationRecord
