"""The one exception tree of WeightsLab.

Every error the library raises on purpose derives from :class:`WeightsLabError`,
so ``except WeightsLabError`` catches them all; foreign errors (SQLAlchemy, OS,
pyarrow) are translated where they cross into the library, with ``raise ... from e``.

    WeightsLabError
    ├── ConfigurationError        bad arguments to a constructor or an API call
    ├── StoreError                the history store
    │   ├── StoreUnavailableError     cannot open / reach the store (bad URL, server down)
    │   ├── SchemaVersionError        database schema older or newer than this code
    │   ├── UnknownExperimentError    no experiment by that name
    │   ├── DuplicateExperimentError  an experiment by that name exists already
    │   ├── EventPayloadError         an event payload that is not canonical JSON
    │   ├── ConcurrencyError          another writer appended to the same experiment first
    │   ├── IntegrityError            a blob, event chain or snapshot fails its hash
    │   └── BlobNotFoundError         a manifest names a blob that is not in the store
    ├── SurgeryError              a model edit that cannot be done safely
    │   └── IndexSelectionError       layer or neuron indices out of range / malformed
    ├── LedgerError               a data-sample operation that cannot be done
    ├── ReplayError               replay diverged from the recorded history
    └── DistributedError          the ranks of a torch.distributed run disagree (another call, another state)

Messages say what happened, what was expected, and what to do.
"""

from __future__ import annotations

__all__ = [
    "BlobNotFoundError",
    "ConcurrencyError",
    "ConfigurationError",
    "DistributedError",
    "DuplicateExperimentError",
    "EventPayloadError",
    "IndexSelectionError",
    "IntegrityError",
    "LedgerError",
    "ReplayError",
    "SchemaVersionError",
    "StoreError",
    "StoreUnavailableError",
    "SurgeryError",
    "UnknownExperimentError",
    "WeightsLabError",
]


class WeightsLabError(Exception):
    """Root of every error WeightsLab raises on purpose."""


class ConfigurationError(WeightsLabError, ValueError):
    """An argument to a constructor or API call is invalid."""


class StoreError(WeightsLabError):
    """Something went wrong in the history store."""


class StoreUnavailableError(StoreError):
    """The store cannot be opened or reached (malformed URL, server down, no permission)."""


class SchemaVersionError(StoreError):
    """The database schema is older or newer than this version of WeightsLab."""


class UnknownExperimentError(StoreError, LookupError):
    """No experiment of that name exists in the store."""


class DuplicateExperimentError(StoreError):
    """An experiment of that name already exists in the store."""


class EventPayloadError(StoreError, TypeError):
    """An event payload cannot be encoded as canonical JSON."""


class ConcurrencyError(StoreError):
    """Another writer appended to the same experiment first; re-read and retry."""


class IntegrityError(StoreError):
    """Stored bytes or records do not match their recorded hash."""


class BlobNotFoundError(IntegrityError, LookupError):
    """A blob named by a manifest or snapshot is not in the store."""


class SurgeryError(WeightsLabError, ValueError):
    """A model edit cannot be done safely; the model is unchanged."""


class IndexSelectionError(SurgeryError, IndexError):
    """Layer or neuron indices are out of range, duplicated or of the wrong type."""


class LedgerError(WeightsLabError, ValueError):
    """A data-sample operation cannot be done; the ledger is unchanged."""


class ReplayError(WeightsLabError):
    """Replay could not rebuild the recorded state (divergence, missing input)."""


class DistributedError(WeightsLabError):
    """The ranks of a ``torch.distributed`` run disagree: another call, other arguments or another state
    on one rank; raised on every rank, with nothing recorded."""
