"""Results as plain Python: column names and row tuples (:class:`Rows`), an experiment's row and an event's.

The read-only tools (``weightslab experiments``, ``events``, ``sql``) print
these without importing pandas (about a third of a second of every call);
the Python API turns them into DataFrames with :meth:`Rows.to_frame`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EventRow", "ExperimentRow", "Rows", "utc"]


@dataclass(frozen=True)
class Rows:
    """Rows of a result, each a tuple in the order of ``columns``.

    Example:
        >>> Rows(["seq", "kind"], [(1, "create"), (2, "train")]).to_frame()
    """

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    def column(self, name: str) -> list[Any]:
        """The values of column ``name``."""
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def select(self, columns: Sequence[str] | Mapping[str, str]) -> Rows:
        """Only ``columns``, in their order (a mapping also renames them: old name → new name)."""
        names = list(columns)
        at = [self.columns.index(c) for c in names]
        titles = [columns[c] for c in names] if isinstance(columns, Mapping) else names
        return Rows(titles, [tuple(row[i] for i in at) for row in self.rows])

    def records(self) -> list[dict[str, Any]]:
        """One dict per row."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        """A DataFrame of these rows (imports pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)


@dataclass(frozen=True)
class ExperimentRow:
    experiment_id: int
    name: str
    created_at: datetime
    recipe: str | None
    config: dict[str, Any]


@dataclass(frozen=True)
class EventRow:
    """One recorded event, as read back from the log."""

    experiment_id: int
    seq: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    state_hash: str | None
    actor: str
    code_version: str
    prev_hash: str | None
    hash: str


def utc(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC); make a time zone-aware UTC one."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
