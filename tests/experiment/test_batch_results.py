"""A loop's batch results applied in bulk: the ledger and the loss/accuracy sums of recording each batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from weightslab.errors import ConfigurationError
from weightslab.experiment.batch_results import BatchResults
from weightslab.ledger import LedgeredDataset

SIZE = 50


def _ledger() -> LedgeredDataset:
    return LedgeredDataset(TensorDataset(torch.zeros(SIZE, 1), torch.arange(SIZE) % 7), "train")


def _batches(count: int = 9) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        n = 16 if i < count - 1 else 5  # a short last batch
        ids = torch.randint(0, SIZE, (n,), generator=g)  # ids repeat within and across batches
        out.append((ids, torch.rand(n, generator=g) * 3, torch.randn(n, 7, generator=g), ids % 7, 100 + 16 * i))
    return out


@pytest.mark.parametrize("max_samples", [1, 40, 1 << 16], ids=["each-batch", "every-few", "at-the-end"])
def test_bulk_results_equal_recording_each_batch(max_samples):
    reference, bulk = _ledger(), _ledger()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with BatchResults(bulk, torch.device("cpu"), max_samples=max_samples) as results:
        for ids, losses, output, labels, age in _batches():
            predictions = output.argmax(1)
            reference.update_batch(ids, losses, predictions, labels, age)
            loss_sum.add_(losses.sum(dtype=torch.float64))
            correct.add_((predictions == labels).sum())
            results.add(ids, losses, output, labels, age)
    for name, column in reference.stats.state_arrays().items():
        np.testing.assert_array_equal(bulk.stats.state_arrays()[name], column, err_msg=name)
    ref_log, bulk_log = reference.drain_history(), bulk.drain_history()
    for name, column in ref_log.items():
        np.testing.assert_array_equal(bulk_log[name], column, err_msg=name)
    np.testing.assert_array_equal(bulk.take_dirty_ids(), reference.take_dirty_ids())
    assert results.loss_sum.item() == loss_sum.item()  # bit-exact: the same sums in the same order
    assert results.correct.item() == correct.item() and results.seen == 8 * 16 + 5


def test_batches_wait_for_the_flush_and_a_limit_flushes_early():
    ds = _ledger()
    results = BatchResults(ds, torch.device("cpu"), max_samples=32)
    batches = _batches(3)
    results.add(*batches[0])
    assert ds.stats.exposure_amount.sum() == 0 and results.correct.item() == 0  # kept, not applied
    results.add(*batches[1])  # 32 samples: applied
    assert ds.stats.exposure_amount.sum() == 32
    results.add(*batches[2])
    results.flush()
    assert ds.stats.exposure_amount.sum() == 37 and results.seen == 37


def test_a_batch_mean_loss_is_refused_at_once_and_records_nothing():
    ds = _ledger()
    results = BatchResults(ds, torch.device("cpu"))
    ids, losses, output, labels, age = _batches(1)[0]
    with pytest.raises(ConfigurationError, match="reduction='none'"):
        results.add(ids, losses.mean(), output, labels, age)
    results.flush()
    assert results.seen == 0 and ds.stats.exposure_amount.sum() == 0 and len(ds.drain_history()["sample_id"]) == 0


def test_an_error_in_the_loop_still_records_the_batches_that_completed():
    ds = _ledger()
    batches = _batches(2)
    with pytest.raises(KeyboardInterrupt), BatchResults(ds, torch.device("cpu")) as results:
        results.add(*batches[0])
        raise KeyboardInterrupt
    assert ds.stats.exposure_amount.sum() == 16 and results.seen == 16


def test_ages_given_as_tensors_read_at_the_flush_equal_ages_given_as_ints():
    as_ints, as_tensors = _ledger(), _ledger()
    with BatchResults(as_ints, torch.device("cpu")) as a, BatchResults(as_tensors, torch.device("cpu")) as b:
        for i, (ids, losses, output, labels, age) in enumerate(_batches(4)):
            a.add(ids, losses, output, labels, age)
            b.add(ids, losses, output, labels, torch.tensor(age) if i % 2 else age)  # mixed, as a loop may
    for name, column in as_ints.stats.state_arrays().items():
        np.testing.assert_array_equal(as_tensors.stats.state_arrays()[name], column, err_msg=name)
    np.testing.assert_array_equal(as_tensors.drain_history()["model_age"], as_ints.drain_history()["model_age"])
