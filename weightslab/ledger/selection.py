"""Selections: turning a predicate, a query or a collection of ids into a set of sample ids.

Pure functions of the statistics (nothing here mutates the ledger), so a deny or
allow can compute and check its whole selection before it changes anything.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger.stats import STAT_COLUMNS, SampleStats

__all__ = [
    "SamplePredicate",
    "check_factor",
    "ids_to_array",
    "predicate_mask",
    "query_mask",
    "sample_kept_allowed",
]

#: The tutorial's predicate: ``(id, age, loss, times, denied, pred, label) -> bool``.
SamplePredicate = Callable[[int, float, float, int, bool, Any, Any], Any]

_SHOWN = 5  # how many offending ids an error message names


def ids_to_array(ids: Iterable[int] | np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Sorted unique int64 ids from any collection of integers, checked against ``0 .. size-1``.

    Raises:
        ConfigurationError: not a collection of integers (a string, floats, bools, None).
        LedgerError: ids outside the dataset (the message names a few).
    """
    if isinstance(ids, str | bytes) or ids is None or isinstance(ids, numbers.Number):
        raise ConfigurationError(
            f"sample ids must be a collection of integers such as {{1, 2, 3}}, got {type(ids).__name__}"
        )
    if isinstance(ids, torch.Tensor):
        arr = ids.detach().cpu().numpy().reshape(-1)
    elif isinstance(ids, np.ndarray):
        arr = ids.reshape(-1)
    else:
        try:
            arr = np.asarray(list(ids))
        except TypeError as e:
            raise ConfigurationError(
                f"sample ids must be a collection of integers such as {{1, 2, 3}}, got {type(ids).__name__}"
            ) from e
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise ConfigurationError(
            f"sample ids must be integers, got values of type {arr.dtype} (e.g. {arr.reshape(-1)[0]!r}); "
            "pass ids such as {1, 2, 3}"
        )
    arr = np.unique(arr.astype(np.int64))
    bad = arr[(arr < 0) | (arr >= size)]
    if len(bad):
        shown = ", ".join(str(int(i)) for i in bad[:_SHOWN]) + (", ..." if len(bad) > _SHOWN else "")
        raise LedgerError(
            f"{len(bad)} sample id(s) are not in this dataset of {size} samples ({shown}); "
            f"valid ids are 0..{size - 1}"
        )
    return arr


def predicate_mask(fn: SamplePredicate, stats: SampleStats) -> np.ndarray:
    """Call ``fn`` once per sample (in id order) and return the bool mask of matches.

    Arguments are Python scalars: ``id`` int, ``age`` float, ``loss`` float,
    ``times`` int, ``denied`` bool, ``pred`` and ``label`` int; never-seen
    samples get NaN for age, loss and pred (and label, unless the labels were
    read when the experiment was created), so comparisons like ``loss <= 1.5``
    are False for them.

    Raises:
        ConfigurationError: ``fn`` is not callable.
        LedgerError: ``fn`` raised (naming the first failing id) or returned
            something other than a bool (numpy bools are fine).
    """
    if not callable(fn):
        raise ConfigurationError(f"the predicate must be callable, got {type(fn).__name__}")
    args = _predicate_arguments(stats)
    results: list[Any] = []
    append = results.append
    try:
        for a in args:
            append(fn(*a))
    except Exception as e:
        raise LedgerError(
            f"the predicate raised {type(e).__name__}: {e} on sample id {len(results)} "
            "(the first failing sample); nothing was changed. Make it return False for samples "
            "it cannot judge (age, loss, pred and label are NaN for never-seen samples)"
        ) from e
    for sample_id, r in enumerate(results):
        if r is not True and r is not False and not isinstance(r, np.bool_):
            raise LedgerError(
                f"the predicate returned {r!r} ({type(r).__name__}) for sample id {sample_id}; "
                "it must return a bool. Nothing was changed"
            )
    return np.array(results, dtype=np.bool_).reshape(stats.size)


def _predicate_arguments(stats: SampleStats) -> Iterable[tuple[Any, ...]]:
    unseen = ~stats.seen()
    age = stats.prediction_age.astype(np.float64)
    age[unseen] = np.nan
    pred: list[Any] = stats.prediction.tolist()
    label: list[Any] = stats.label.tolist()
    if unseen.any():
        pred_obj, label_obj = np.array(pred, dtype=object), np.array(label, dtype=object)
        pred_obj[unseen] = math.nan
        label_obj[stats.label_unknown()] = math.nan
        pred, label = pred_obj.tolist(), label_obj.tolist()
    return zip(
        range(stats.size),
        age.tolist(),
        stats.prediction_loss.astype(np.float64).tolist(),
        stats.exposure_amount.tolist(),
        stats.deny_listed.tolist(),
        pred,
        label,
    )


def query_mask(query: str, stats: SampleStats) -> np.ndarray:
    """Evaluate a pandas query expression over the statistic columns; rows where it is NA do not match.

    The names are those of :meth:`SampleStats.to_dataframe` plus ``sample_id``;
    only the columns the expression names are built, and no DataFrame is, so a
    million samples take milliseconds.

    Raises:
        ConfigurationError: ``query`` is not a string.
        LedgerError: the expression is invalid or does not give one bool per sample.
    """
    if not isinstance(query, str):
        raise ConfigurationError(
            f"the query must be a string such as 'prediction_loss <= 1.5', got {query!r}"
        )
    columns = ", ".join(["sample_id", *STAT_COLUMNS])
    try:
        result = pd.eval(
            query, engine="python", resolvers=(_LazyColumns(stats),), local_dict={}, global_dict={}
        )
    except Exception as e:
        raise LedgerError(
            f"invalid query {query!r}: {type(e).__name__}: {e}. Write a pandas query expression over "
            f"the columns {columns}, e.g. 'prediction_loss <= 1.5 and exposure_amount >= 2'"
        ) from e
    is_condition = (
        isinstance(result, np.ndarray | pd.api.extensions.ExtensionArray | pd.Series)
        and result.shape == (stats.size,)
        and (result.dtype == np.bool_ or str(result.dtype) == "boolean")
    )
    if not is_condition:
        got = type(result).__name__ + (f" of {result.dtype}" if hasattr(result, "dtype") else "")
        raise LedgerError(
            f"the query {query!r} must be a condition giving True/False per sample, got {got}; "
            f"compare columns ({columns}), e.g. 'prediction_loss <= 1.5'"
        )
    if isinstance(result, np.ndarray):
        return result
    return pd.array(result, dtype="boolean").to_numpy(dtype=np.bool_, na_value=False)


class _LazyColumns(MutableMapping):
    """The names a query may use, each column built on first use (pandas also stores temporaries here)."""

    def __init__(self, stats: SampleStats) -> None:
        self._stats = stats
        self._names = ("sample_id", *STAT_COLUMNS)
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            self._built[name] = self._stats.frame_column(name)
        return self._built[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._built[name] = value

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._names, *self._built]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._names, *self._built]))


def check_factor(factor: Any) -> float:
    """Validate ``allow_to_denied_factor``: a finite number >= 0.

    Raises:
        ConfigurationError: not a real number.
        LedgerError: negative, NaN or infinite.
    """
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise ConfigurationError(f"allow_to_denied_factor must be a number such as 3, got {factor!r}")
    value = float(factor)
    if not math.isfinite(value) or value < 0:
        raise LedgerError(
            f"allow_to_denied_factor must be finite and >= 0, got {factor!r}; "
            "0 denies every matching sample, k keeps k allowed per non-matching sample"
        )
    return value


def sample_kept_allowed(matching: np.ndarray, n_not_matching: int, factor: float, seed: int) -> np.ndarray:
    """Choose ``min(len(matching), floor(factor * n_not_matching))`` of ``matching`` to keep allowed.

    The choice depends only on its arguments (a PCG64 generator seeded by
    ``seed``), never on a global random state. Returns sorted int64 ids.
    """
    keep = min(len(matching), math.floor(factor * n_not_matching))
    if keep <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(matching[rng.permutation(len(matching))[:keep]]).astype(np.int64)
