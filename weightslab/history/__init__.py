"""The history store: SQL schema, event log, blobs, statistics tables, snapshots.

Imports no torch (tensor encoding imports it lazily), so read-only tools stay light.
The public names are loaded on first use: importing one module of the package
(``weightslab.history.lineage``) does not load the store and its dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ChainReport", "EventRow", "ExperimentRow", "Store"]

_EXPORTS = {"ChainReport": "eventlog", "EventRow": "eventlog", "ExperimentRow": "store", "Store": "store"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'weightslab.history' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"weightslab.history.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from weightslab.history.eventlog import ChainReport, EventRow
    from weightslab.history.store import ExperimentRow, Store
