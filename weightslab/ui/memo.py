"""Results kept for a few seconds under a key (an experiment and its head, a query), for concurrent pages."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["Memo"]

T = TypeVar("T")


class Memo:
    """A small LRU of computed values, each kept ``ttl`` seconds at most.

    The key names what the value depends on (e.g. an experiment's head seq); the time limit covers
    what the key cannot see (statistics rows written a moment after their event).
    """

    def __init__(self, ttl: float, size: int = 256) -> None:
        self.ttl, self.size = ttl, size
        self._values: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value kept under ``key``, or ``compute()`` (kept from now on)."""
        now = time.monotonic()
        with self._lock:
            kept = self._values.get(key)
            if kept is not None and now - kept[0] < self.ttl:
                self._values.move_to_end(key)
                return kept[1]
        value = compute()
        with self._lock:
            self._values[key] = (now, value)
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value
