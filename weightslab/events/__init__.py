"""Events: pure value objects and their canonical encoding (no torch, no SQL)."""

from weightslab.events.codec import canonical_json, chain_hash, decode_payload
from weightslab.events.record import EventKind, Observable, OperationRecord

__all__ = [
    "EventKind",
    "Observable",
    "OperationRecord",
    "canonical_json",
    "chain_hash",
    "decode_payload",
]
