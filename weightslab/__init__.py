"""WeightsLab: edit a running PyTorch experiment, keep a replayable SQL history.

The public names are loaded lazily, so read-only tools (``weightslab sql``,
``audit``, ``lineage``) that import ``weightslab.history`` do not pay for torch.

Example:
    >>> from weightslab import Experiment, NetworkWithOps, Conv2dWithNeuronOps, LinearWithNeuronOps
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from weightslab.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "BatchNorm2dWithNeuronOps": "weightslab.surgery",
    "BlobNotFoundError": "weightslab.errors",
    "ConcurrencyError": "weightslab.errors",
    "ConfigurationError": "weightslab.errors",
    "Conv2dWithNeuronOps": "weightslab.surgery",
    "DistributedError": "weightslab.errors",
    "DuplicateExperimentError": "weightslab.errors",
    "EventPayloadError": "weightslab.errors",
    "Experiment": "weightslab.experiment",
    "IndexSelectionError": "weightslab.errors",
    "IntegrityError": "weightslab.errors",
    "LedgerError": "weightslab.errors",
    "LedgerSampler": "weightslab.ledger",
    "LedgeredDataset": "weightslab.ledger",
    "LinearWithNeuronOps": "weightslab.surgery",
    "NetworkWithOps": "weightslab.surgery",
    "ReplayError": "weightslab.errors",
    "SchemaVersionError": "weightslab.errors",
    "Store": "weightslab.history",
    "StoreError": "weightslab.errors",
    "StoreUnavailableError": "weightslab.errors",
    "SurgeryError": "weightslab.errors",
    "TrackingMode": "weightslab.surgery",
    "UnknownExperimentError": "weightslab.errors",
    "WeightsLabError": "weightslab.errors",
    "convert_to_ops": "weightslab.surgery",
    "replica": "weightslab.experiment.replica",
    "tune_malloc": "weightslab.experiment.allocator",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("weightslab", _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover
    from weightslab.errors import (
        BlobNotFoundError,
        ConcurrencyError,
        ConfigurationError,
        DuplicateExperimentError,
        EventPayloadError,
        IndexSelectionError,
        IntegrityError,
        LedgerError,
        ReplayError,
        SchemaVersionError,
        StoreError,
        StoreUnavailableError,
        SurgeryError,
        UnknownExperimentError,
        WeightsLabError,
    )
    from weightslab.experiment import Experiment
    from weightslab.experiment.allocator import tune_malloc
    from weightslab.experiment.replica import replica
    from weightslab.history import Store
    from weightslab.ledger import LedgeredDataset, LedgerSampler
    from weightslab.surgery import (
        BatchNorm2dWithNeuronOps,
        Conv2dWithNeuronOps,
        LinearWithNeuronOps,
        NetworkWithOps,
        TrackingMode,
        convert_to_ops,
    )
