"""How the commands print: tables for people (with tabulate), JSON and CSV for programs."""

from __future__ import annotations

import json
import math
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["print_frame", "print_json", "render_table"]

CELL_WIDTH = 60  # table cells are cut here; JSON and CSV carry the full values


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON (times in ISO 8601, bytes in hex, numpy scalars as numbers)."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable))


def print_frame(frame: pd.DataFrame, fmt: str) -> None:
    """Print ``frame`` as a table (``fmt="table"``), JSON records or CSV."""
    if fmt == "json":
        print_json(_records(frame))
    elif fmt == "csv":
        from weightslab.history.export import json_cells

        json_cells(frame).to_csv(sys.stdout, index=False)
    else:
        print(render_table(frame))


def render_table(frame: pd.DataFrame) -> str:
    """A plain-text table for people: numbers right-aligned, long cells cut, missing values blank."""
    from tabulate import tabulate

    if frame.empty:
        return "(no rows)" if len(frame.columns) else "(no columns)"
    numeric = [frame[c].dtype.kind in "iuf" for c in frame.columns]
    cells = [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    return tabulate(cells, headers=[str(c) for c in frame.columns], tablefmt="simple", disable_numparse=True,
                    colalign=["right" if n else "left" for n in numeric])


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
