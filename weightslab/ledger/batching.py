"""Batched reads of in-memory tensor datasets, and the collate function that passes them through.

A DataLoader over a map-style dataset reads a batch one item at a time and then
stacks the items (``default_collate``): for a ``TensorDataset`` that is 2 x 256
row copies, 256 tuples and two ``torch.stack`` calls a batch, about a millisecond
on a 2-core CPU, or a tenth of the tutorial model's training step. A plain
``torch.utils.data.TensorDataset`` of ``(inputs, labels)`` can instead be read
with one ``index_select`` per tensor. :func:`read_tensor_batch` does that and
returns a :class:`CollatedBatch`; :func:`collate` (the collate function of the
Experiment's loaders) hands its tensors on as they are.

The values are the very rows ``default_collate`` would stack (same dtype, shape
and bits), so training and replay are unchanged. A :class:`CollatedBatch` is also
a sequence of ``(input, label, sample_id)`` items, so a DataLoader with any other
collate function still gets what it expects, only without the speed-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import torch
from torch.utils.data import TensorDataset, default_collate

__all__ = ["CollatedBatch", "collate", "read_tensor_batch", "reads_in_batches"]


class CollatedBatch(Sequence[tuple[torch.Tensor, torch.Tensor, int]]):
    """A batch already collated as ``[inputs, labels, sample_ids]`` (``sample_ids`` int64).

    Item ``k`` is ``(inputs[k], labels[k], sample_ids[k])``, as a batch of single items would be.
    """

    __slots__ = ("tensors",)

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        self.tensors = (inputs, labels, ids)

    def __len__(self) -> int:
        return len(self.tensors[2])

    @overload
    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]: ...

    @overload
    def __getitem__(self, k: slice) -> list[tuple[torch.Tensor, torch.Tensor, int]]: ...

    def __getitem__(self, k: int | slice) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        x, y, ids = self.tensors
        return x[k], y[k], int(ids[k])


def reads_in_batches(dataset: Any) -> bool:
    """Whether ``dataset`` is a plain ``TensorDataset`` of two tensors (inputs, labels).

    Subclasses that change how an item is read (``__getitem__`` or ``__getitems__``) are read item by item.
    """
    cls = type(dataset)
    return (
        isinstance(dataset, TensorDataset)
        and cls.__getitem__ is TensorDataset.__getitem__
        and getattr(cls, "__getitems__", None) is None
        and len(dataset.tensors) == 2
    )


def read_tensor_batch(dataset: TensorDataset, ids: list[int] | torch.Tensor) -> CollatedBatch:
    """Rows ``ids`` (non-negative: a list, or an int64 tensor that becomes the batch's ids) of a dataset for
    which :func:`reads_in_batches` holds."""
    index = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids, dtype=torch.int64)
    inputs, labels = dataset.tensors
    return CollatedBatch(inputs[index], labels[index], index)


def collate(batch: Any) -> Any:
    """The Experiment loaders' collate function: a :class:`CollatedBatch` as its list of tensors,
    anything else through ``default_collate``."""
    if isinstance(batch, CollatedBatch):
        return list(batch.tensors)
    return default_collate(batch)
