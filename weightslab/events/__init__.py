"""Events: typed domain events, their canonical encoding, and the operation records (no torch, no SQL)."""

from weightslab.events.codec import canonical_json, chain_hash, decode_payload
from weightslab.events.domain import EVENT_CLASSES, DomainEvent, EventKind, RecordedEvent, decode, event_class
from weightslab.events.record import OperationRecord

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
