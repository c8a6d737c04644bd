"""Helpers shared by the ledger tests (a module of its own: ``conftest`` is not importable)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from weightslab.ledger import LedgeredDataset

SYNTH_SIZE = 60_000
SEEN = 50_000  # the synthetic "seen" ledger has predictions for ids 0..SEEN-1 only


def synthetic_tensors(size: int = SYNTH_SIZE, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(size, 8, generator=g), torch.randint(0, 10, (size,), generator=g))


def record_pass(
    ds: LedgeredDataset, ids: np.ndarray, model_age: int, seed: int = 1, batch: int = 256
) -> None:
    """One pass of made-up losses/predictions over ``ids``, in batches, as a training loop would."""
    g = torch.Generator().manual_seed(seed)
    labels = ds.wrapped.tensors[1]
    for start in range(0, len(ids), batch):
        b = torch.as_tensor(ids[start : start + batch])
        losses = torch.rand(len(b), generator=g) * 3
        preds = torch.randint(0, 10, (len(b),), generator=g)
        ds.update_batch(b, losses, preds, labels[b], model_age + start)


def snapshot(ds: LedgeredDataset) -> dict[str, np.ndarray]:
    """Copies of every ledger array, for "nothing changed" assertions."""
    return ds.state_arrays()


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def make_mlp() -> torch.nn.Module:
    """A small digits classifier, initialised from a fixed seed."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def train_epochs(loader, epochs: int, ledger: LedgeredDataset | None = None) -> tuple[torch.nn.Module, list]:
    """Plain training loop over batches ``(x, y, ...)``; records per-sample stats in ``ledger`` if given.

    Returns the model and the list of each batch's label tensor (to compare batch order).
    """
    model = make_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    age, seen = 0, []
    for _ in range(epochs):
        for batch in loader:
            x, y = batch[0], batch[1]
            out = model(x)
            losses = torch.nn.functional.cross_entropy(out, y, reduction="none")
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
            if ledger is not None:
                ledger.update_batch(batch[2], losses, out.argmax(1), y, age)
            age += len(y)
            seen.append(y.clone())
    return model, seen
