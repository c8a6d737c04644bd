"""Fixtures for Experiment tests: the tutorial model and small real data (digits)."""

from __future__ import annotations

import pytest
import torch
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel, digits_datasets


@pytest.fixture(scope="session")
def digits():
    return digits_datasets()


@pytest.fixture
def make_exp(digits, store_target, tmp_path):
    """Build experiments on the parametrized store (SQLite dir / PostgreSQL schema).

    TensorBoard logs go to the test's own folder (beside a PostgreSQL store they would
    otherwise go to ./store/tensorboard and pile up across runs)."""
    made = []

    def make(name: str = "x0", *, model=None, store=None, **kw) -> Experiment:
        torch.manual_seed(0)
        train_ds, eval_ds = digits
        args = dict(model=model if model is not None else MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                    eval_dataset=eval_ds, device="cpu", learning_rate=1e-2, batch_size=64, name=name,
                    store=store or store_target, tensorboard_dir=str(tmp_path / "tb" / name))
        args.update(kw)
        exp = Experiment(**args)
        made.append(exp)
        return exp

    yield make
    for exp in made:
        exp.close()
        exp.store.close()
