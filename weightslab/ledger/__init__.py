"""The per-sample ledger: statistics, deny/allow lists and a sampler that honours them.

- :mod:`~weightslab.ledger.stats` — the statistic columns and the vectorised batch update
- :mod:`~weightslab.ledger.pass_log` — per-sample prediction rows awaiting a flush to SQL
- :mod:`~weightslab.ledger.selection` — predicate / query / ids → a set of sample ids
- :mod:`~weightslab.ledger.dataset` — the dataset wrapper and its deny/allow operations
- :mod:`~weightslab.ledger.sampler` — the sampler over allowed ids, with exact state
- :mod:`~weightslab.ledger.fingerprint` — a cheap identity of the wrapped dataset
"""

from weightslab.ledger.dataset import LedgeredDataset
from weightslab.ledger.fingerprint import dataset_fingerprint
from weightslab.ledger.pass_log import PASS_LOG_COLUMNS, PassLog
from weightslab.ledger.sampler import LedgerSampler
from weightslab.ledger.stats import STAT_COLUMNS, SampleStats

__all__ = [
    "PASS_LOG_COLUMNS",
    "STAT_COLUMNS",
    "LedgerSampler",
    "LedgeredDataset",
    "PassLog",
    "SampleStats",
    "dataset_fingerprint",
]
