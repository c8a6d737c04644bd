"""A result as plain Python: column names and row tuples.

The read-only tools (``weightslab experiments``, ``events``, ``sql``) print
these without importing pandas (about a third of a second of every call);
the Python API turns them into DataFrames with :meth:`Rows.to_frame`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Rows"]


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
