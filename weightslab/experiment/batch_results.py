"""A loop's per-batch results, applied to the ledger and to the running loss/accuracy in bulk.

A train or eval loop produces, for each batch, its sample ids, per-sample losses,
predictions and labels. Recording them batch by batch costs a dozen small numpy
and torch calls per batch, and between a forward and a backward pass those calls
run with cold caches (measured in the tutorial's loop: ~250 µs a batch of 256
against ~8 µs a batch in bulk). :class:`BatchResults` keeps references to the
batch tensors and applies them every ``max_samples`` samples and when the loop
ends, as one ledger update (``model_age`` per sample) and, for the running loss
and accuracy, the same per-batch float64 sums in the same order as before: the
results are bit-identical to recording each batch as it comes.

On an accelerator the tensors stay on the device until the flush, and the train
loop passes the model age as a copy of the device counter, so recording a batch
costs no device-to-host copy and no synchronisation inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from weightslab.errors import ConfigurationError
from weightslab.ledger import LedgeredDataset

__all__ = ["BatchResults"]

#: Samples held before a flush (four numbers a sample); a training call hands their rows to the statistics
#: writer at each flush, so this also bounds the rows that only start to be written when the call ends.
FLUSH_SAMPLES = 1 << 14
#: Batches held before a flush under torch.distributed (counted in batches: the same on every rank).
GATHER_BATCHES = 64


class BatchResults:
    """Collects one loop's batches for ``ds``; :meth:`flush` (or leaving the ``with`` block) applies them.

    Attributes:
        loss_sum: float64 sum of every applied per-sample loss (a 0-d tensor on ``device``).
        correct: number of applied samples whose prediction equals the label.
        seen: number of samples added (applied or pending).
    """

    def __init__(self, ds: LedgeredDataset, device: torch.device, max_samples: int | None = None,
                 gather: Callable[[list[Any]], list[Any]] | None = None,
                 on_flush: Callable[[], None] | None = None) -> None:
        self._ds = ds
        self._max = FLUSH_SAMPLES if max_samples is None else max_samples
        #: called after each flush inside the loop (not the last, when the loop ends): the training call hands
        #: the rows that changed to the statistics writer then, so that writing them overlaps the training
        self._on_flush = on_flush
        #: under torch.distributed: turns this rank's shares of the kept batches into the global batches
        #: (experiment/distributed.py); flushes then come every GATHER_BATCHES batches, the same on every rank
        self._gather = gather
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int | torch.Tensor]] = []
        self._pending = 0
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0

    def add(self, ids: torch.Tensor, losses: torch.Tensor, output: torch.Tensor, labels: torch.Tensor,
            age: int | torch.Tensor) -> None:
        """Keep one batch: ``losses`` per sample, ``output`` the model's (predictions are its argmax),
        ``age`` the model age it was predicted at (an int, or a 0-d tensor read at the flush)."""
        losses = losses.detach()
        predictions = output.detach().argmax(dim=1) if output.dim() > 1 else output.detach()
        n = len(ids)
        if losses.numel() != n or predictions.numel() != n or labels.numel() != n:
            raise ConfigurationError(
                f"a batch of {n} ids needs {n} per-sample losses, predictions and labels, got shapes "
                f"{tuple(losses.shape)}, {tuple(predictions.shape)}, {tuple(labels.shape)}; the criterion "
                "must return one loss per sample (reduction='none')"
            )
        if losses.dim() != 1 or predictions.dim() != 1 or labels.dim() != 1:
            losses, predictions, labels = losses.reshape(-1), predictions.reshape(-1), labels.reshape(-1)
        self._batches.append((ids, losses, predictions, labels, age))
        self._pending += n
        self.seen += n
        if self._pending >= self._max if self._gather is None else len(self._batches) >= GATHER_BATCHES:
            self.flush()
            if self._on_flush is not None:
                self._on_flush()

    def flush(self) -> None:
        """Apply the pending batches to the ledger and to ``loss_sum`` / ``correct``."""
        batches, self._batches, self._pending = self._batches, [], 0
        if self._gather is not None:
            local = sum(len(b[0]) for b in batches)
            batches = self._gather(batches)
            self.seen += sum(len(b[0]) for b in batches) - local
        if not batches:
            return
        for _, losses, predictions, labels, _ in batches:  # per batch, in order: the same float64 sums
            self.loss_sum.add_(losses.sum(dtype=torch.float64))
            self.correct.add_((predictions == labels).sum())
        ids, losses, predictions, labels, ages = zip(*batches)
        ages = _ints(ages)
        if len(batches) == 1:
            self._ds.update_batch(ids[0], losses[0], predictions[0], labels[0], ages[0])
            return
        per_sample_age = np.repeat(np.asarray(ages, np.int64), [len(i) for i in ids])
        self._ds.update_batch(torch.cat(ids), torch.cat(losses), torch.cat(predictions), torch.cat(labels),
                              per_sample_age)

    def __enter__(self) -> BatchResults:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._gather is not None and exc[0] is not None:
            return  # the other ranks may not be here to gather: the write-ahead guard rebuilds the state
        self.flush()  # also after an error: the batches that completed are recorded, as before


def _ints(values: tuple[int | torch.Tensor, ...]) -> list[int]:
    """``values`` as ints; the tensors among them are read in one transfer."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [int(v) for v in values]
    read = iter(torch.stack([t.reshape(()) for t in tensors]).tolist())
    return [int(next(read)) if isinstance(v, torch.Tensor) else int(v) for v in values]
