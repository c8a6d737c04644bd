"""How the commands print: tables for people (with tabulate), JSON and CSV for programs.

Results come as :class:`~weightslab.history.rows.Rows` (the read-only commands: no pandas is imported)
or as DataFrames.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightslab.history.rows import Rows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["print_frame", "print_json", "render_table"]

CELL_WIDTH = 60  # table cells are cut here; JSON and CSV carry the full values


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON (times in ISO 8601, bytes in hex, numpy scalars as numbers)."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable))


def print_frame(frame: Rows | pd.DataFrame, fmt: str) -> None:
    """Print ``frame`` as a table (``fmt="table"``), JSON records or CSV."""
    if isinstance(frame, Rows):
        _print_rows(frame, fmt)
    elif fmt == "json":
        print_json(_records(frame))
    elif fmt == "csv":
        from weightslab.history.export import json_cells

        json_cells(frame).to_csv(sys.stdout, index=False)
    else:
        print(render_table(frame))


def _print_rows(rows: Rows, fmt: str) -> None:
    if fmt == "json":
        print_json([{str(k): (None if _is_missing(v) else v) for k, v in zip(rows.columns, row, strict=True)}
                    for row in rows])
    elif fmt == "csv":
        from weightslab.events.codec import canonical_json

        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(rows.columns)
        out.writerows([canonical_json(v) if isinstance(v, dict | list) else "" if _is_missing(v) else v
                       for v in row] for row in rows)
    else:
        print(render_table(rows))


def render_table(frame: Rows | pd.DataFrame) -> str:
    """A plain-text table for people: numbers right-aligned, long cells cut, missing values blank."""
    if isinstance(frame, Rows):
        columns, rows = frame.columns, frame.rows
        numeric = [_numbers(frame.column(c)) for c in columns]
    else:
        columns = list(frame.columns)
        rows = list(frame.itertuples(index=False, name=None))
        numeric = [frame[c].dtype.kind in "iuf" for c in columns]
    if not rows:
        return "(no rows)" if len(columns) else "(no columns)"
    from tabulate import tabulate

    cells = [[_cell(v) for v in row] for row in rows]
    return tabulate(cells, headers=[str(c) for c in columns], tablefmt="simple", disable_numparse=True,
                    colalign=["right" if n else "left" for n in numeric])


def _numbers(values: list[Any]) -> bool:
    """Whether a column holds numbers (and missing values) only: it is right-aligned."""
    present = [v for v in values if not _is_missing(v)]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


def _cell(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=_jsonable)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): (None if _is_missing(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value) or (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False
