"""What the benchmarks share: the tutorial's architecture in plain torch.nn, and synthetic data.

``tools/bench.py`` compares training through ``Experiment`` with a plain PyTorch loop over
:class:`PlainMNISTModel` (the same layers and shapes as ``weightslab.demo.MNISTModel``), on
:func:`synthetic` data as a ``TensorDataset`` (which the Experiment's loader reads a batch at a
time) and through :class:`ItemByItem` (read one item at a time on both sides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class PlainMNISTModel(nn.Module):
    """The tutorial's architecture from plain torch.nn layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layer0 = nn.Conv2d(1, 2, 3)
        self.layer1 = nn.Conv2d(2, 4, 3)
        self.layer2 = nn.Conv2d(4, 10, 3)
        self.out = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.layer0(x)), 2)
        x = F.max_pool2d(F.relu(self.layer1(x)), 2)
        x = F.max_pool2d(F.relu(self.layer2(x)), 2)
        return F.log_softmax(self.out(x.view(x.size(0), -1)), dim=1)


def synthetic(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


class ItemByItem(Dataset):
    """The same items through a dataset with only ``__getitem__``: every DataLoader (plain or the
    Experiment's) reads them one at a time and stacks them, so the loader costs the same on both
    sides and a comparison shows only the work WeightsLab adds."""

    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ds[i]
