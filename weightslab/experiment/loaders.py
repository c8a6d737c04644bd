"""The experiment's batches: its two loaders, their iterators, and where training is in the epoch.

Training continues an epoch across calls (a new one starts when one ends), so the
train iterator lives between calls. With DataLoader workers the loader reads
ahead of training: :meth:`Batches.sync_train_position` puts the sampler back where
training really is. A deny/allow or a restore makes the next batch come from the
sampler's new state (:meth:`Batches.reset`, :meth:`Batches.drop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.ledger.batching import collate

__all__ = ["Batch", "Batches", "share_of"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, labels, sample ids


def share_of(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch of ``n`` samples: as even as can be, the first
    ``n % world_size`` ranks taking one more (a rank's share of a short last batch may be empty)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Batches:
    """The train and eval loaders of one experiment and their running iterators."""

    def __init__(self, train: tuple[LedgeredDataset, LedgerSampler], eval: tuple[LedgeredDataset, LedgerSampler],
                 *, batch_size: int, eval_batch_size: int, num_workers: int, seed: int,
                 device: torch.device) -> None:
        self.device = device
        self.num_workers = num_workers
        # Loaders get their own generator: starting an iterator then draws its worker seed from it,
        # not from torch's global RNG, so when iterators are (re)started cannot change training.
        self.generator = torch.Generator().manual_seed(seed)
        pin = device.type == "cuda"
        # collate: a TensorDataset's batch arrives already collated (see weightslab.ledger.batching)
        self.train_loader = DataLoader(train[0], batch_size=batch_size, sampler=train[1], num_workers=num_workers,
                                       pin_memory=pin, generator=self.generator, collate_fn=collate)
        self.eval_loader = DataLoader(eval[0], batch_size=eval_batch_size, sampler=eval[1], num_workers=num_workers,
                                      pin_memory=pin, generator=self.generator, collate_fn=collate)
        self._train_ledger, self._train_sampler = train
        self._eval_ledger = eval[0]
        self._train_iter: Iterator[Any] | None = None
        self._eval_iter: Iterator[Any] | None = None
        self._last_train_id = -1
        self.share: tuple[int, int] | None = None  # (rank, world size) under torch.distributed: see distribute()
        self.last_global = 0  # samples in the last global training batch (this rank trained on its share)

    def distribute(self, rank: int, world_size: int) -> None:
        """Under torch.distributed: the loaders give global batches (``batch_size × world_size`` ids, drawn
        from the same sampler on every rank) and :meth:`next_train` / :meth:`next_eval` / :meth:`full_eval`
        this rank's share of each (see :mod:`~weightslab.experiment.distributed`)."""
        self.share = (rank, world_size)
        for attr in ("train_loader", "eval_loader"):
            loader = getattr(self, attr)
            setattr(self, attr, DataLoader(loader.dataset, batch_size=loader.batch_size * world_size,
                                           sampler=loader.sampler, num_workers=self.num_workers,
                                           pin_memory=loader.pin_memory, generator=self.generator,
                                           collate_fn=collate))
        self.drop()

    def _mine(self, batch: Any) -> Any:
        if self.share is None:
            return batch
        part = share_of(len(batch[2]), *self.share)
        return batch[0][part], batch[1][part], batch[2][part]

    def set_train_batch_size(self, batch_size: int) -> None:
        """Build the train loader anew for another batch size (same sampler: the epoch goes on)."""
        self.sync_train_position()
        loader = self.train_loader
        if self.share is not None:
            batch_size *= self.share[1]  # the global batch
        self.train_loader = DataLoader(loader.dataset, batch_size=batch_size, sampler=self._train_sampler,
                                       num_workers=self.num_workers, pin_memory=loader.pin_memory,
                                       generator=self.generator, collate_fn=collate)
        self._train_iter = None

    @property
    def train_epoch(self) -> int:
        """Epochs the training sampler has started."""
        return self._train_sampler.epoch

    def _to_device(self, batch: Any) -> Batch:
        inputs, labels, ids = batch
        nb = self.device.type == "cuda"
        return inputs.to(self.device, non_blocking=nb), labels.to(self.device, non_blocking=nb), ids

    def next_train(self) -> Batch:
        """The next training batch; a new epoch starts (the sampler draws its order) when one ends."""
        ledger = self._train_ledger
        if not self.num_workers and ledger.reads_in_batches:
            # In this process, from a TensorDataset: the same batches as the loader's, drawn as arrays
            # (LedgerSampler.next_batch) and read with one index per tensor, with no Python per sample.
            size = self.train_loader.batch_size
            assert size is not None
            inputs, labels, ids = ledger.read_ids(self._train_sampler.next_batch(size)).tensors
            if self.train_loader.pin_memory:
                inputs, labels, ids = inputs.pin_memory(), labels.pin_memory(), ids.pin_memory()
            batch: Any = (inputs, labels, ids)
        else:
            batch = self._next_from_loader()
        self._last_train_id = int(batch[2][-1])
        self.last_global = len(batch[2])
        return self._to_device(self._mine(batch))

    def _next_from_loader(self) -> Any:
        if self._train_iter is None:
            self._train_iter = iter(self.train_loader)
        try:
            return next(self._train_iter)
        except StopIteration:
            self._train_iter = iter(self.train_loader)
            return next(self._train_iter)

    def next_eval(self) -> Batch:
        """The next eval batch (the eval set is walked in order, round and round)."""
        if self._eval_iter is None:
            self._eval_iter = iter(self.eval_loader)
        try:
            batch = next(self._eval_iter)
        except StopIteration:
            self._eval_iter = iter(self.eval_loader)
            batch = next(self._eval_iter)
        return self._to_device(self._mine(batch))

    def full_eval(self) -> Iterator[Batch]:
        """Every allowed eval sample once, in id order."""
        allowed = self._eval_ledger.allowed_ids().tolist()
        loader = DataLoader(self._eval_ledger, batch_size=self.eval_loader.batch_size, sampler=allowed,
                            num_workers=self.num_workers, generator=self.generator, collate_fn=collate)
        for batch in loader:
            yield self._to_device(self._mine(batch))

    def sync_train_position(self) -> None:
        """With workers the loader reads ahead: put the sampler where training really is."""
        if self.num_workers and self._train_iter is not None:
            self._train_iter = None
            self._train_sampler.seek(self._train_sampler.position_after(self._last_train_id))

    def reset(self) -> None:
        """After a deny/allow: the next batches come from the samplers' new state."""
        if self._train_iter is not None and self.num_workers:
            self.sync_train_position()
        self.drop()

    def drop(self) -> None:
        """Forget the running iterators (after a restore, which set the samplers' state itself)."""
        self._train_iter = None
        self._eval_iter = None
