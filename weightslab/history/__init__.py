"""The history store: SQL schema, event log, blobs, statistics tables, snapshots.

Imports no torch (tensor encoding imports it lazily), so read-only tools stay light.
The public names are loaded on first use: importing one module of the package
(``weightslab.history.lineage``) does not load the store and its dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from weightslab.lazy import lazy_getattr

__all__ = ["ChainReport", "EventRow", "ExperimentRow", "Store"]

_EXPORTS = {"ChainReport": "eventlog", "EventRow": "rows", "ExperimentRow": "rows", "Store": "store"}


__getattr__ = lazy_getattr("weightslab.history", _EXPORTS, globals())


if TYPE_CHECKING:  # pragma: no cover
    from weightslab.history.eventlog import ChainReport
    from weightslab.history.rows import EventRow, ExperimentRow
    from weightslab.history.store import Store
