"""LedgerSampler.next_batch: the batches a DataLoader draws from the sampler, as arrays, with the same state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from weightslab.errors import ConfigurationError
from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.ledger.batching import collate


def _pair(n: int, seed: int = 5, shuffle: bool = True):
    def make():
        ds = LedgeredDataset(TensorDataset(torch.arange(n, dtype=torch.float32), torch.zeros(n, dtype=torch.long)),
                             "train")
        return ds, LedgerSampler(ds, seed=seed, shuffle=shuffle)
    return make(), make()


class _LoaderBatches:
    """Batches as the Experiment drew them from its DataLoader: one running iterator, a new one at StopIteration."""

    def __init__(self, ds: LedgeredDataset, sampler: LedgerSampler, size: int) -> None:
        self.loader = DataLoader(ds, batch_size=size, sampler=sampler, collate_fn=collate)
        self.it = None

    def next(self) -> np.ndarray:
        if self.it is None:
            self.it = iter(self.loader)
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        return batch[2].numpy()


def _same_state(a: LedgerSampler, b: LedgerSampler) -> None:
    sa, sb = a.state_arrays(), b.state_arrays()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.mark.parametrize(("n", "size"), [(100, 10), (100, 7), (37, 64), (64, 64), (1, 1)])
def test_next_batch_gives_the_loaders_batches_and_leaves_the_same_state_after_each(n, size):
    (ds_a, s_a), (ds_b, s_b) = _pair(n)
    loader = _LoaderBatches(ds_a, s_a, size)
    for _ in range(3 * ((n + size - 1) // size) + 2):  # three epochs and a bit
        expected = loader.next()
        got = s_b.next_batch(size)
        assert got.dtype == np.int64 and got.flags.writeable
        np.testing.assert_array_equal(got, expected)
        _same_state(s_a, s_b)


def test_samples_denied_mid_epoch_are_skipped_as_the_loader_skips_them():
    (ds_a, s_a), (ds_b, s_b) = _pair(120)
    loader = _LoaderBatches(ds_a, s_a, 16)
    rng = np.random.default_rng(0)
    for step in range(40):
        if step in (2, 9, 17, 30):  # deny some, allow some back: a new iterator continues where the sampler is
            ids = rng.choice(120, size=25, replace=False)
            for ds in (ds_a, ds_b):
                ds.allowlist_samples(None)
                ds.denylist_samples(ids)
            loader.it = None  # as Batches.reset() drops the running iterator after a deny/allow
        np.testing.assert_array_equal(s_b.next_batch(16), loader.next())
        _same_state(s_a, s_b)


def test_an_epoch_whose_remaining_samples_are_all_denied_ends_and_the_next_batch_starts_a_new_one():
    (ds_a, s_a), (ds_b, s_b) = _pair(40)
    loader = _LoaderBatches(ds_a, s_a, 10)
    for _ in range(2):
        np.testing.assert_array_equal(s_b.next_batch(10), loader.next())
    rest = s_a.state_arrays()["permutation"][20:]
    for ds in (ds_a, ds_b):
        ds.denylist_samples(rest)
    loader.it = None
    np.testing.assert_array_equal(s_b.next_batch(10), loader.next())
    _same_state(s_a, s_b)
    assert s_b.epoch == 2


def test_without_shuffling_and_after_a_restore_the_batches_still_match():
    (ds_a, s_a), (ds_b, s_b) = _pair(50, shuffle=False)
    loader = _LoaderBatches(ds_a, s_a, 12)
    for _ in range(3):
        np.testing.assert_array_equal(s_b.next_batch(12), loader.next())
    saved = s_b.state_arrays()
    later = [s_b.next_batch(12) for _ in range(6)]
    s_b.load_state_arrays(saved)
    for batch in later:
        np.testing.assert_array_equal(s_b.next_batch(12), batch)


def test_a_batch_size_below_one_is_refused_and_changes_nothing():
    (_, _), (_, s) = _pair(10)
    before = s.state_arrays()
    with pytest.raises(ConfigurationError, match="size >= 1"):
        s.next_batch(0)
    after = s.state_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)
