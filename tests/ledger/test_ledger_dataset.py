"""The dataset wrapper: items with ids, the wrapped dataset, the fingerprint, worker copies."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from ledger_helpers import synthetic_tensors
from torch.utils.data import Subset, TensorDataset

from weightslab.errors import LedgerError
from weightslab.ledger import LedgeredDataset, dataset_fingerprint


def test_items_are_input_label_and_the_wrapped_index(digits_tensors):
    ds = LedgeredDataset(digits_tensors, "train")
    x, y, i = ds[1000]
    assert i == 1000 and isinstance(i, int)
    assert torch.equal(x, digits_tensors.tensors[0][1000]) and y == digits_tensors.tensors[1][1000]
    assert len(ds) == 1797 and ds.wrapped is digits_tensors and ds.split == "train"


def test_negative_index_returns_the_positive_sample_id(synth):
    assert synth[-1][2] == 59_999


def test_index_past_the_end_raises_index_error_like_the_wrapped_dataset(synth):
    with pytest.raises(IndexError):
        synth[60_000]


def test_fingerprint_is_deterministic_and_names_the_length(synth):
    fp = synth.fingerprint()
    assert fp.startswith("60000:") and len(fp.split(":")[1]) == 64
    assert LedgeredDataset(synthetic_tensors(), "eval").fingerprint() == fp
    assert fp == dataset_fingerprint(synth.wrapped)


def test_fingerprint_changes_with_other_data_or_length(synth):
    fp = synth.fingerprint()
    assert LedgeredDataset(synthetic_tensors(seed=1), "train").fingerprint() != fp
    assert LedgeredDataset(Subset(synth.wrapped, range(59_999)), "train").fingerprint() != fp
    x, y = synth.wrapped.tensors
    changed_last = TensorDataset(x.clone(), y.clone())
    changed_last.tensors[0][-1, 0] += 1.0  # the last item is always hashed
    assert LedgeredDataset(changed_last, "train").fingerprint() != fp


def test_fingerprint_of_an_empty_dataset():
    empty = LedgeredDataset(TensorDataset(torch.zeros(0, 2), torch.zeros(0)), "eval")
    assert empty.fingerprint().startswith("0:")


def test_worker_copy_carries_the_items_but_not_the_statistics_or_observers(synth):
    synth.add_observer(lambda record: None)
    synth.denylist_samples({3})
    clone = copy.copy(synth)  # the same __getstate__ a spawned DataLoader worker receives
    assert clone[3][2] == 3 and len(clone) == len(synth)
    with pytest.raises(LedgerError, match="main process"):
        clone.get_dataframe()
    pickle.dumps(synth)  # the observer (a lambda, which pickle refuses) is not part of the copy
    assert synth.stats.deny_listed[3]


def test_repr_names_split_size_and_denied_count(synth):
    synth.denylist_samples(range(5))
    assert repr(synth) == "LedgeredDataset(TensorDataset, split='train', size=60000, denied=5)"


def test_a_batch_fetch_gives_the_same_items_and_ids_as_one_by_one(synth):
    indices = [5, 0, 59_999, 17, -1]
    batch = synth.__getitems__(indices)
    for (x, y, i), j in zip(batch, indices):
        x1, y1, i1 = synth[j]
        assert i == i1 == (j % len(synth)) and torch.equal(x, x1) and torch.equal(y, y1)


def test_a_batch_fetch_uses_the_wrapped_datasets_own_batch_fetch():
    class Batched(TensorDataset):
        calls: list[list[int]] = []

        def __getitems__(self, indices):
            Batched.calls.append(list(indices))
            return [(self.tensors[0][i], self.tensors[1][i]) for i in indices]

    ds = LedgeredDataset(Batched(torch.arange(10.0), torch.arange(10)), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batches = list(loader)
    assert Batched.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(10))


def test_a_batch_fetch_names_an_item_that_is_not_a_pair():
    class Triples(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (i, i, i) if i == 2 else (i, i)

    ds = LedgeredDataset(Triples(), "train")
    assert [item[2] for item in ds.__getitems__([0, 1])] == [0, 1]
    with pytest.raises(LedgerError, match="item 2 of Triples is not an .input, label. pair"):
        ds.__getitems__([1, 2, 3])


def test_a_batch_fetch_that_returns_the_wrong_number_of_items_is_named():
    class Short(TensorDataset):
        def __getitems__(self, indices):
            return [(self.tensors[0][i], self.tensors[1][i]) for i in indices[:-1]]

    ds = LedgeredDataset(Short(torch.arange(6.0), torch.arange(6)), "train")
    with pytest.raises(LedgerError, match=r"Short.__getitems__ returned 2 items for 3 indices"):
        ds.__getitems__([0, 1, 2])
