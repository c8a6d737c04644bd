"""Observers: who hears of an operation, and the one place that tells them.

An object whose operations are recorded (a network, a dataset wrapper) holds one
:class:`Observers` and keeps public ``add_observer`` / ``remove_observer``
methods that delegate to it. An operation tells its observers as the *last step
of its transaction* (write-ahead): when an observer raises (e.g. the Experiment
could not write the event), the operation first undoes everything it changed,
then the observer's exception propagates unchanged. An operation is kept only
once it is recorded. Pure Python: no torch, no SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightslab.events.record import OperationRecord

__all__ = ["Observer", "Observers"]

Observer = Callable[[OperationRecord], None]


class Observers:
    """The observers of one subject, in the order they were added.

    A copy of the subject (pickle, deepcopy, a DataLoader worker) starts with no
    observers: an observer such as the Experiment's recorder belongs to the original.

    Example:
        >>> log = []
        >>> observers = Observers()
        >>> observers.add(log.append)
        >>> observers.notify(OperationRecord("freeze", {"up_to_index": 1}))
        >>> [record.kind for record in log]
        ['freeze']
    """

    __slots__ = ("_observers",)

    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (Observers, ())

    def __len__(self) -> int:
        """Number of observers."""
        return len(self._observers)

    def add(self, observer: Observer) -> None:
        """Call ``observer(record)`` after every successful operation (once, however often added)."""
        if observer not in self._observers:
            self._observers.append(observer)

    def remove(self, observer: Observer) -> None:
        """Stop notifying ``observer`` (no error if it was not added)."""
        if observer in self._observers:
            self._observers.remove(observer)

    def notify(self, record: OperationRecord, rollback: Callable[[], None] | None = None) -> None:
        """Hand ``record`` to each observer; if one raises, call ``rollback()``, then re-raise.

        Args:
            record: the operation that is about to be kept.
            rollback: undoes everything the operation changed; called at most once, before
                the observer's exception propagates (unchanged, with its traceback).

        Observers notified before the one that raised are not told; with a single
        observer (the Experiment), the operation and its event are kept or refused together.
        """
        try:
            for observer in list(self._observers):
                observer(record)
        except BaseException:
            if rollback is not None:
                rollback()
            raise
