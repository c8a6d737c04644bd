"""The observer contract: how an operation tells the world it happened.

Every editing operation (on the model, a layer, or a dataset wrapper) describes
itself, as the last step of its transaction, as one :class:`OperationRecord`
handed to each observer of the object it was invoked on (see
:mod:`weightslab.events.observers`). The Experiment is such an observer and
turns records into events; a refused operation produces no record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OperationRecord"]


@dataclass(frozen=True)
class OperationRecord:
    """A completed operation: what was asked, and what it did.

    Attributes:
        kind: the event kind (:class:`~weightslab.events.domain.EventKind`).
        args: JSON-serialisable arguments that re-execute the operation exactly
            (including any random seed it drew).
        result: JSON-serialisable outcome (e.g. new widths, ids changed).
    """

    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)

