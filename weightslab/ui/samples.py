"""The samples page: ``sample_stats`` paged on the database, sorted, filtered, and the loss per label.

Pages are read by key (*keyset pagination*): the next page continues after the
last row's (value, sample id), so each page is one top-N query over the split,
whatever its depth (an ``OFFSET`` deep into 10^6 rows would sort them all).
Rows whose sort value is missing (never-seen samples) come last in both
directions. The filter is a ``deny_samples_where`` expression
(:mod:`weightslab.ui.sample_filter`), run by the database.

The histogram of loss per label bins the filtered rows' losses in 30 equal bins
(numpy). In a split of more than :data:`HISTOGRAM_ROWS` samples it reads every
k-th sample id only and scales the counts by k, to answer within a fraction of a
second at 10^6 rows (grouping them in SQLite, which has no hash aggregation,
sorts them all: about half a second); the page says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from weightslab.errors import ConfigurationError
from weightslab.history.store import Store
from weightslab.ui.memo import Memo
from weightslab.ui.sample_filter import to_sql

__all__ = ["HISTOGRAM_ROWS", "PAGE_SIZE", "SORTS", "Histogram", "SamplePage", "SampleQuery", "histogram", "page"]

PAGE_SIZE = 50
HISTOGRAM_ROWS = 50_000
HISTOGRAM_BINS = 30
#: What the page sorts by (a column of sample_stats) and the label the page shows.
SORTS = {"sample_id": "sample id", "prediction_loss": "loss", "prediction_age": "age",
         "exposure_amount": "exposure"}
_NULLABLE = {"prediction_loss", "prediction_age"}
_COUNTS = Memo(ttl=5.0)  # a query's next and previous pages reuse its count (and its histogram) for a few seconds
COLUMNS = ("sample_id", "label", "prediction", "prediction_loss", "prediction_age", "exposure_amount", "deny_listed")


@dataclass(frozen=True)
class SampleQuery:
    """What the samples page shows: a split, a filter, an order, and where the page starts."""

    split: str = "train"
    where: str = ""
    sort: str = "sample_id"
    descending: bool = False
    after: tuple[float | None, int] | None = None  # the page starts after this (value, sample id)...
    before: tuple[float | None, int] | None = None  # ... or ends before it (the previous page)
    start: int = 0  # the row number of the page's first row (for display only)

    @classmethod
    def parse(cls, params: Any) -> SampleQuery:
        """From the request's query parameters (``split``, ``where``, ``sort``, ``order``, ``after``, ``before``,
        ``start``).

        Raises:
            ConfigurationError: a value outside those the page offers (the message lists them).
        """
        split = params.get("split") or "train"
        if split not in ("train", "eval"):
            raise ConfigurationError(f"split must be 'train' or 'eval', not {split!r}")
        sort = params.get("sort") or "sample_id"
        if sort not in SORTS:
            raise ConfigurationError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
        order = params.get("order") or "asc"
        if order not in ("asc", "desc"):
            raise ConfigurationError(f"order must be 'asc' or 'desc', not {order!r}")
        try:
            start = max(0, int(params.get("start") or 0))
        except ValueError as e:
            raise ConfigurationError(f"start must be a row number, not {params.get('start')!r}") from e
        return cls(split, (params.get("where") or "").strip(), sort, order == "desc",
                   _cursor(params.get("after")), _cursor(params.get("before")), start)

    def link(self, **changes: Any) -> dict[str, str]:
        """The query parameters of this query with ``changes`` (a cursor cleared unless given)."""
        q = replace(self, **{"after": None, "before": None, "start": 0, **changes})
        out = {"split": q.split, "sort": q.sort, "order": "desc" if q.descending else "asc"}
        if q.where:
            out["where"] = q.where
        for name in ("after", "before"):
            cursor = getattr(q, name)
            if cursor is not None:
                out[name] = f"{'null' if cursor[0] is None else repr(cursor[0])}:{cursor[1]}"
        if q.start:
            out["start"] = str(q.start)
        return out


@dataclass(frozen=True)
class SamplePage:
    query: SampleQuery
    rows: list[dict[str, Any]]
    total: int  # rows matching the split and the filter
    has_next: bool
    has_previous: bool


@dataclass(frozen=True)
class Histogram:
    """Loss counts per label and bin; ``stride`` > 1: counted on every stride-th sample id, scaled by it."""

    edges: list[float]
    counts: dict[str, list[int]] = field(default_factory=dict)  # label ("unknown" for none) → count per bin
    stride: int = 1
    rows: int = 0  # rows with a loss that match the split and the filter (estimated when stride > 1)


def page(store: Store, experiment_id: int, query: SampleQuery, size: int = PAGE_SIZE) -> SamplePage:
    """One page of samples (see the module docstring).

    Raises:
        ConfigurationError: the filter is not a valid expression (the message says what is allowed).
    """
    where, params = _where(experiment_id, query)
    count = f"SELECT COUNT(*) AS n FROM sample_stats WHERE {where}"  # noqa: S608 - see _where
    key = (store.describe(), count, tuple(sorted(params.items())))
    total = _COUNTS.get(key, lambda: int(store.query(count, params).iloc[0, 0]))
    backwards = query.before is not None and query.after is None
    cursor = query.before if backwards else query.after
    ascending = query.descending == backwards  # a previous page reads the other way, then turns round
    rows = _read(store, where, params, query.sort, ascending, cursor, size + 1, nulls_last=not backwards)
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
        return SamplePage(query, rows, total, has_next=True, has_previous=more)
    return SamplePage(query, rows, total, has_next=more, has_previous=query.after is not None)


def histogram(store: Store, experiment_id: int, query: SampleQuery) -> Histogram:
    """The loss histogram per label of the rows ``query`` selects (its order and page do not matter)."""
    where, params = _where(experiment_id, query)
    key = (store.describe(), "histogram", where, tuple(sorted(params.items())))
    return _COUNTS.get(key, lambda: _histogram(store, experiment_id, query.split, where, params))


def _histogram(store: Store, experiment_id: int, split: str, where: str, params: dict[str, Any]) -> Histogram:
    size_sql = "SELECT COUNT(*) AS n FROM sample_stats WHERE experiment_id = :e AND split = :split"
    size = _COUNTS.get((store.describe(), size_sql, experiment_id, split),
                       lambda: int(store.query(size_sql, {"e": experiment_id, "split": split}).iloc[0, 0]))
    stride = max(1, math.ceil(size / HISTOGRAM_ROWS))
    sampled = where + " AND prediction_loss IS NOT NULL" + (" AND sample_id % :stride = 0" if stride > 1 else "")
    rows = store.query(f"SELECT label, prediction_loss FROM sample_stats WHERE {sampled}",  # noqa: S608 - see _where
                       {**params, "stride": stride})
    if rows.empty:
        return Histogram(edges=[])
    loss = rows["prediction_loss"].to_numpy(dtype=float)
    labels = rows["label"].to_numpy(dtype=float, na_value=np.nan)
    edges = np.linspace(loss.min(), loss.max() if loss.max() > loss.min() else loss.min() + 1.0, HISTOGRAM_BINS + 1)
    counts: dict[str, list[int]] = {}
    for label in sorted(set(labels[~np.isnan(labels)].astype(int).tolist())) + ([None] if np.isnan(labels).any() else []):
        mine = loss[np.isnan(labels)] if label is None else loss[labels == label]
        counts["unknown" if label is None else str(label)] = (np.histogram(mine, edges)[0] * stride).tolist()
    return Histogram(edges.tolist(), counts, stride, len(loss) * stride)


def _where(experiment_id: int, query: SampleQuery) -> tuple[str, dict[str, Any]]:
    """The condition of the rows ``query`` selects: column names from fixed lists, every value bound."""
    where, params = "experiment_id = :e AND split = :split", {"e": experiment_id, "split": query.split}
    if query.where:
        condition = to_sql(query.where)
        where += f" AND {condition.sql}"
        params.update(condition.params)
    return where, params


def _read(store: Store, where: str, params: dict[str, Any], sort: str, ascending: bool,
          cursor: tuple[float | None, int] | None, limit: int, *, nulls_last: bool = True) -> list[dict[str, Any]]:
    """Up to ``limit`` rows after ``cursor`` in the order (value, sample id), rows without a value last
    (``nulls_last=False``, when reading a previous page backwards: first)."""
    up, direction = (">", "ASC") if ascending else ("<", "DESC")
    base = {**params, "cid": cursor[1] if cursor else None}
    if sort == "sample_id":
        key = " AND sample_id {up} :cid" if cursor else ""
        return _fetch(store, where + key.format(up=up), f"sample_id {direction}", base, limit)
    if sort not in _NULLABLE:
        key = f" AND ({sort} {up} :cv OR ({sort} = :cv AND sample_id {up} :cid))" if cursor else ""
        return _fetch(store, where + key, f"{sort} {direction}, sample_id {direction}",
                      {**base, "cv": cursor[0] if cursor else None}, limit)

    def valued(rows_left: int) -> list[dict[str, Any]]:
        key = f" AND ({sort} {up} :cv OR ({sort} = :cv AND sample_id {up} :cid))" \
            if cursor is not None and cursor[0] is not None else ""
        return _fetch(store, f"{where} AND {sort} IS NOT NULL{key}", f"{sort} {direction}, sample_id {direction}",
                      {**base, "cv": cursor[0] if cursor else None}, rows_left)

    def missing(rows_left: int) -> list[dict[str, Any]]:
        key = f" AND sample_id {up} :cid" if cursor is not None and cursor[0] is None else ""
        return _fetch(store, f"{where} AND {sort} IS NULL{key}", f"sample_id {direction}", base, rows_left)

    on_values = cursor is None or cursor[0] is not None
    if nulls_last:
        rows = valued(limit) if on_values else []
        return rows + (missing(limit - len(rows)) if len(rows) < limit else [])
    rows = [] if cursor is not None and on_values else missing(limit)
    return rows + (valued(limit - len(rows)) if len(rows) < limit else [])


def _fetch(store: Store, where: str, order: str, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(COLUMNS)} FROM sample_stats WHERE {where} ORDER BY {order} LIMIT :limit"  # noqa: S608
    frame = store.query(sql, {**{k: v for k, v in params.items() if f":{k}" in sql}, "limit": limit})
    return [{c: _clean(c, v) for c, v in zip(frame.columns, row)} for row in frame.itertuples(index=False)]


def _clean(column: str, value: Any) -> Any:
    """A cell as the page shows it: None when missing, the column's own type (pandas made ints float)."""
    if value is None or value != value:
        return None
    if column == "deny_listed":
        return bool(value)
    return float(value) if column == "prediction_loss" else int(value)


def _cursor(text: str | None) -> tuple[float | None, int] | None:
    if not text:
        return None
    value, _, sample_id = text.rpartition(":")
    try:
        return (None if value == "null" else float(value)), int(sample_id)
    except ValueError as e:
        raise ConfigurationError(f"the page cursor {text!r} is not 'VALUE:SAMPLE_ID'") from e
