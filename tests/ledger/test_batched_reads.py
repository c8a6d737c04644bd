"""Batched reads of a TensorDataset: the same batches, bit for bit, as reading item by item."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.ledger.batching import CollatedBatch, collate, reads_in_batches


def _tensors(n: int = 300) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g))


class ItemByItem(Dataset):
    """The same items, through a dataset that has only __getitem__ (the generic path)."""

    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride() and torch.equal(x, y)
               for x, y in zip(a, b, strict=True))


def test_only_a_plain_two_tensor_dataset_is_read_in_batches():
    ds = _tensors(10)

    class Transformed(TensorDataset):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x * 2, y

    assert reads_in_batches(ds)
    assert not reads_in_batches(Transformed(*ds.tensors))
    assert not reads_in_batches(TensorDataset(torch.zeros(4, 2)))  # not (input, label)
    assert not reads_in_batches(ItemByItem(ds))


def test_a_batched_loader_gives_bit_identical_batches_to_item_by_item_reads():
    base = _tensors()
    fast = LedgeredDataset(base, "train")
    slow = LedgeredDataset(ItemByItem(base), "train")
    fast_batches = list(DataLoader(fast, batch_size=64, sampler=LedgerSampler(fast, seed=3), collate_fn=collate))
    slow_batches = list(DataLoader(slow, batch_size=64, sampler=LedgerSampler(slow, seed=3), collate_fn=collate))
    assert len(fast_batches) == len(slow_batches) == 5
    for a, b in zip(fast_batches, slow_batches):
        assert _same(a, b)
    assert fast_batches[0][2].dtype == torch.int64


def test_a_batched_read_is_still_a_sequence_of_items_for_any_collate_function():
    ds = LedgeredDataset(_tensors(), "train")
    batch = ds.__getitems__([7, 0, 299, -1])
    assert isinstance(batch, CollatedBatch) and len(batch) == 4
    x, y, i = batch[3]
    assert i == 299 and torch.equal(x, ds.wrapped.tensors[0][299]) and torch.equal(y, ds.wrapped.tensors[1][299])
    assert [item[2] for item in batch[1:3]] == [0, 299]
    # a user's DataLoader with the default collate function gets the same batches, only slower
    default = list(DataLoader(ds, batch_size=50))
    ours = list(DataLoader(ds, batch_size=50, collate_fn=collate))
    assert all(_same(a, b) for a, b in zip(default, ours, strict=True))


def test_an_index_out_of_range_fails_as_it_does_item_by_item():
    ds = LedgeredDataset(_tensors(10), "train")
    with pytest.raises(IndexError):
        ds.__getitems__([3, 10])
    with pytest.raises(IndexError):
        ds[10]


def test_collate_passes_other_batches_to_default_collate():
    items = [(torch.ones(2), torch.tensor(1), 0), (torch.zeros(2), torch.tensor(2), 1)]
    assert _same(collate(items), default_collate(items))


def test_batched_reads_work_in_dataloader_workers():
    ds = LedgeredDataset(_tensors(), "train")
    with_workers = list(DataLoader(ds, batch_size=64, num_workers=2, collate_fn=collate))
    in_process = list(DataLoader(ds, batch_size=64, collate_fn=collate))
    assert all(_same(a, b) for a, b in zip(with_workers, in_process, strict=True))
