"""Every sample's label, read once when an experiment is created.

``sample_stats`` then holds a row for every sample from the start, with its label,
so SQL counts agree with the dataset (``GROUP BY label`` is the class balance) before
a sample is ever seen. Where the dataset keeps its labels together they are read at
no cost: a ``TensorDataset`` of (inputs, labels), or a ``targets`` attribute (most
torchvision data sets, ``ImageFolder`` included); otherwise every item is read once.
Labels that are not one integer per item (regression targets, say) are not recorded:
the label of such a sample is known once it has been seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["dataset_labels"]


def _integers(values: Any, size: int) -> np.ndarray | None:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        return None
    if arr.shape != (size,) or arr.dtype.kind not in "iub":
        return None
    if size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        return None
    return arr.astype(np.int32)


def dataset_labels(dataset: Any) -> np.ndarray | None:
    """The label of every item of a map-style dataset of ``(input, label)``, as int32, or None when the
    labels are not one integer each.

    Example:
        >>> dataset_labels(TensorDataset(torch.zeros(3, 2), torch.tensor([2, 0, 1])))
        array([2, 0, 1], dtype=int32)
    """
    size = len(dataset)
    if type(dataset) is TensorDataset and len(dataset.tensors) == 2:
        return _integers(dataset.tensors[1], size)
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        found = _integers(targets, size)
        if found is not None:
            return found
    labels = []
    for i in range(size):
        item = dataset[i]
        label = item[1] if isinstance(item, tuple | list) and len(item) == 2 else None
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = label.item()
        if isinstance(label, np.generic):
            label = label.item()
        if not isinstance(label, int):  # bools are ints too: a binary label
            return None
        labels.append(label)
    return _integers(np.asarray(labels, dtype=np.int64), size)
