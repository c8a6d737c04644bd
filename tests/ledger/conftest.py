"""Fixtures of the ledger tests: a 60,000-sample synthetic set and scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ledger_helpers import SEEN, record_pass, synthetic_tensors
from torch.utils.data import TensorDataset

from weightslab.ledger import LedgeredDataset


@pytest.fixture
def synth() -> LedgeredDataset:
    """60,000 never-seen training samples."""
    return LedgeredDataset(synthetic_tensors(), "train")


@pytest.fixture
def synth_seen() -> LedgeredDataset:
    """60,000 training samples, ids 0..49,999 seen once (losses uniform in [0, 3)), the rest never seen."""
    ds = LedgeredDataset(synthetic_tensors(), "train")
    record_pass(ds, np.arange(SEEN), model_age=0)
    ds.drain_history()
    ds.take_dirty_ids()
    return ds


@pytest.fixture(scope="session")
def digits_tensors() -> TensorDataset:
    """scikit-learn's 1,797 8×8 digits as (float32 features / 16, int64 label)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return TensorDataset(
        torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.int64)
    )
