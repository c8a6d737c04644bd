"""The undo log of one operation: how to reverse each of its mutations, newest last.

Every mutation an operation makes (a tensor swapped into a parameter, a buffer,
an optimizer state entry, a width, a cache) is preceded by a log entry that
reverses it. The operation rolls the log back when one of its steps fails, and
also when an observer refuses to record it: the observers are told as the last
step of the transaction (write-ahead), so an edit is kept only once it is
recorded. Rolling back restores the previous *objects*, not copies of them.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from functools import partial
from typing import Any

__all__ = ["UndoLog"]

_ABSENT = object()


class UndoLog:
    """Steps that undo an operation's mutations, run newest first by :meth:`rollback`.

    Example:
        >>> log, box = UndoLog(), {"width": 4}
        >>> log.set_item(box, "width", 6)
        >>> log.rollback()
        >>> box
        {'width': 4}
    """

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[Callable[[], Any]] = []

    def __len__(self) -> int:
        """Number of logged steps not yet rolled back."""
        return len(self._steps)

    def push(self, step: Callable[[], Any]) -> None:
        """Log ``step``, which undoes the mutation about to be made."""
        self._steps.append(step)

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """``setattr(obj, name, value)``, logging how to put the old value back."""
        self.push(partial(setattr, obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def set_item(self, mapping: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        """``mapping[key] = value``, logging how to put the old entry (or its absence) back."""
        old = mapping.get(key, _ABSENT)  # (a defaultdict creates nothing on get)
        if old is _ABSENT:
            self.push(partial(mapping.pop, key, None))
        else:
            self.push(partial(mapping.__setitem__, key, old))
        mapping[key] = value

    def rollback(self) -> None:
        """Run the logged steps, newest first, and forget them (a second call does nothing)."""
        steps, self._steps = self._steps, []
        for step in reversed(steps):
            step()
