"""Values as ``Store.query`` hands them back, made the same on every backend.

SQLite returns times as text and JSON columns as text; PostgreSQL returns
``datetime`` and decoded JSON. Times are made timezone-aware UTC.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

__all__ = ["as_json", "as_utc", "finite", "short_hash", "since"]


def as_utc(value: Any) -> datetime | None:
    """A timezone-aware UTC datetime from a ``datetime`` or ISO text (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        value = getattr(value, "to_pydatetime", lambda: None)()
        if value is None:
            return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_json(value: Any) -> Any:
    """A JSON column's value, decoded if the driver handed back text."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value


def finite(value: Any) -> float | None:
    """A float, or None for missing, NaN and infinite values."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def short_hash(value: str | None, n: int = 12) -> str:
    return value[:n] if value else ""


def since(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in words: ``"12 s"``, ``"5 min"``, ``"3 h"``, ``"2 d"``."""
    if when is None:
        return ""
    seconds = max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"
