"""The history store: SQL schema, event log, blobs, statistics tables, snapshots.

Imports no torch (tensor encoding imports it lazily), so read-only tools stay light.
"""

from weightslab.history.eventlog import ChainReport, EventRow
from weightslab.history.store import ExperimentRow, Store

__all__ = ["ChainReport", "EventRow", "ExperimentRow", "Store"]
