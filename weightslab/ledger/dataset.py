"""The dataset wrapper: what a user reaches as ``exp.train_loader.dataset``.

It yields ``(input, label, sample_id)``, keeps the per-sample statistics of its
split, and owns the deny/allow operations. Every operation is plan → check →
apply → record: the selection is computed and checked in full before the first
write, so a refused operation leaves the ledger unchanged and notifies nobody;
a successful one tells each observer once, as its last step, with an
:class:`~weightslab.events.record.OperationRecord` whose ``args["ids"]`` re-executes
it exactly (see :meth:`LedgeredDataset.apply_recorded`). If an observer raises
(the event could not be written), the deny flags and dirty marks are put back
as they were and the observer's exception propagates (write-ahead).
"""

from __future__ import annotations

import numbers
import operator
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.events.domain import EventKind
from weightslab.events.observers import Observer, Observers
from weightslab.events.record import OperationRecord
from weightslab.ledger.batching import CollatedBatch, read_tensor_batch, reads_in_batches
from weightslab.ledger.fingerprint import dataset_fingerprint
from weightslab.ledger.labels import dataset_labels
from weightslab.ledger.selection import (
    SamplePredicate,
    check_factor,
    ids_to_array,
    predicate_mask,
    query_mask,
    sample_kept_allowed,
)
from weightslab.ledger.stats import SampleStats

__all__ = ["LedgeredDataset"]

Ids = Iterable[int] | np.ndarray | torch.Tensor


class LedgeredDataset(Dataset):
    """A map-style dataset of ``(input, label)`` pairs, with per-sample statistics and deny/allow lists.

    Args:
        dataset: any map-style dataset whose items are ``(input, label)`` pairs.
        split: the split's name, ``"train"`` or ``"eval"`` (any non-empty name is
            accepted; only ``"train"`` refuses to deny every sample).

    ``ds[i]`` returns ``(input, label, i)``: the sample id is the wrapped index,
    stable across runs. The statistics stay in the process that created the
    wrapper; a copy sent to a DataLoader worker carries only the wrapped dataset.

    Example:
        >>> ds = LedgeredDataset(torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.arange(4)), "train")
        >>> ds[2][2], len(ds)
        (2, 4)
    """

    def __init__(self, dataset: Any, split: str) -> None:
        if not isinstance(split, str) or not split:
            raise ConfigurationError(
                f"split must be a non-empty name such as 'train' or 'eval', got {split!r}"
            )
        try:
            size = len(dataset)
        except TypeError as e:
            raise ConfigurationError(
                f"LedgeredDataset wraps a map-style dataset with __len__ and __getitem__, got "
                f"{type(dataset).__name__}"
            ) from e
        self._wrapped = dataset
        self._split = split
        self._size = size
        self._stats: SampleStats | None = SampleStats(size)
        self._batched = reads_in_batches(dataset)  # a plain TensorDataset: read a batch with one index
        self._observers = Observers()
        self._seed_source: Callable[[], int] | None = None

    # ------------------------------------------------------------------ dataset protocol

    @property
    def wrapped(self) -> Any:
        """The original dataset."""
        return self._wrapped

    @property
    def split(self) -> str:
        """The split's name (``"train"``, ``"eval"``)."""
        return self._split

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        i = operator.index(index)
        x, y = self._pair(i, self._wrapped[i])
        return x, y, i + self._size if i < 0 else i

    def __getitems__(self, indices: list[int]) -> Sequence[tuple[Any, Any, int]]:
        """A batch of items, as DataLoader asks for them: one call per batch, not one per sample.

        A plain ``TensorDataset`` is read with one index per tensor and comes back already
        collated (a :class:`~weightslab.ledger.batching.CollatedBatch`, still a sequence of
        items); otherwise the wrapped dataset's own ``__getitems__`` (a batched fetch) is used
        when it has one, else its items are read one by one.
        """
        positions = [operator.index(i) for i in indices]
        if self._batched:
            size = self._size
            if all(-size <= i < size for i in positions):
                return read_tensor_batch(self._wrapped, [i + size if i < 0 else i for i in positions])
        fetch = getattr(self._wrapped, "__getitems__", None)
        items = fetch(positions) if callable(fetch) else [self._wrapped[i] for i in positions]
        if len(items) != len(positions):
            raise LedgerError(
                f"{type(self._wrapped).__name__}.__getitems__ returned {len(items)} items for "
                f"{len(positions)} indices; it must return one item per index"
            )
        size = self._size
        try:
            return [(x, y, i + size if i < 0 else i) for (x, y), i in zip(items, positions)]
        except (TypeError, ValueError):
            for i, item in zip(positions, items):  # find the item at fault and say what is wrong with it
                self._pair(i, item)
            raise

    @property
    def reads_in_batches(self) -> bool:
        """Whether the wrapped dataset is a plain ``TensorDataset`` read a batch at a time (:meth:`read_ids`)."""
        return self._batched

    def read_ids(self, ids: np.ndarray) -> CollatedBatch:
        """The batch of the int64 ids ``ids`` (in ``0 .. len-1``, as a sampler hands them out) of a dataset that
        :attr:`reads_in_batches`: ``[inputs, labels, ids]`` by one index per tensor, the rows ``__getitems__``
        returns for the same ids."""
        if not self._batched:
            raise LedgerError(f"{type(self._wrapped).__name__} is read item by item; use __getitems__")
        index = np.asarray(ids, np.int64)
        return read_tensor_batch(self._wrapped, torch.from_numpy(index if index.flags.writeable else index.copy()))

    def _pair(self, i: int, item: Any) -> tuple[Any, Any]:
        try:
            x, y = item
        except (TypeError, ValueError) as e:
            raise LedgerError(
                f"item {i} of {type(self._wrapped).__name__} is not an (input, label) pair; "
                "wrap a dataset whose items are (input, label)"
            ) from e
        return x, y

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader worker needs only the items; statistics, observers and the seed source stay here.
        return {"_wrapped": self._wrapped, "_split": self._split, "_size": self._size, "_stats": None,
                "_batched": self._batched, "_observers": Observers(), "_seed_source": None}

    # ------------------------------------------------------------------ observers and seeds

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` as the last step of every deny/allow on this dataset.

        If the observer raises, the operation is rolled back (deny flags and dirty marks
        as before) and the observer's exception propagates.
        """
        self._observers.add(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop notifying ``observer`` (no error if it was not registered)."""
        self._observers.remove(observer)

    def set_seed_source(self, source: Callable[[], int] | None) -> None:
        """Draw the seed of a sampled deny called without ``seed=`` from ``source()``.

        ``source()`` must return an int in ``0..2**62-1``; the seed used is recorded as
        always. ``None`` removes the source (seeds are then drawn with ``secrets``).

        Raises:
            ConfigurationError: ``source`` is neither callable nor None.

        Example:
            >>> ds.set_seed_source(lambda: 1234)
        """
        if source is not None and not callable(source):
            raise ConfigurationError(
                f"a seed source must be a function returning an int in 0..2**62-1 (or None to remove it), "
                f"got {source!r} ({type(source).__name__})"
            )
        self._seed_source = source

    def _draw_seed(self) -> int:
        source = self._seed_source
        if source is None:
            return secrets.randbits(62)
        seed = source()
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**62:
            raise ConfigurationError(
                f"the seed source returned {seed!r}; it must return an int in 0..2**62-1. Nothing was changed"
            )
        return int(seed)

    def fingerprint(self) -> str:
        """``"<length>:<sha256>"`` of the wrapped dataset's length and a few items (cheap)."""
        return dataset_fingerprint(self._wrapped)

    def record_labels(self) -> bool:
        """Read every sample's label now (see :mod:`weightslab.ledger.labels`); returns whether they are
        known (False: the labels are not one integer each, and stay unknown until seen)."""
        labels = dataset_labels(self._wrapped)
        if labels is not None:
            self.stats.record_labels(labels)
        return labels is not None

    def __repr__(self) -> str:
        denied = "?" if self._stats is None else int(self._stats.deny_listed.sum())
        return f"LedgeredDataset({type(self._wrapped).__name__}, split={self._split!r}, size={self._size}, denied={denied})"

    # ------------------------------------------------------------------ statistics

    @property
    def stats(self) -> SampleStats:
        """The statistic arrays (see :class:`~weightslab.ledger.stats.SampleStats`)."""
        if self._stats is None:
            raise LedgerError(
                "this is a DataLoader worker's copy of the dataset: statistics live in the main process; "
                "update them there from the ids that come with each batch"
            )
        return self._stats

    def update_batch(
        self,
        ids: torch.Tensor,
        losses: torch.Tensor,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        model_age: int | np.ndarray,
    ) -> None:
        """Record one batch's per-sample losses and predictions (see :meth:`SampleStats.update_batch`)."""
        self.stats.update_batch(ids, losses, predictions, labels, model_age)

    def drain_history(self) -> dict[str, np.ndarray]:
        """Per-sample rows ``sample_id, model_age, loss, prediction`` since the last drain."""
        return self.stats.drain_history()

    def take_dirty_ids(self) -> np.ndarray:
        """Ids whose statistics or deny flag changed since the last call (sorted int64)."""
        return self.stats.take_dirty_ids()

    def get_dataframe(self) -> pd.DataFrame:
        """The statistics as a DataFrame indexed by ``sample_id``.

        Columns: ``prediction_age`` (float, NaN before the first pass),
        ``prediction_loss`` (float64, NaN before), ``exposure_amount`` (int),
        ``deny_listed`` (bool), ``prediction`` and ``label`` (nullable Int64).
        """
        return self.stats.to_dataframe()

    def allowed_ids(self) -> np.ndarray:
        """Sorted ids that are not deny-listed."""
        return self.stats.allowed_ids()

    def is_denied(self, ids: Ids) -> np.ndarray:
        """Bool mask: which of ``ids`` (in the given order) are deny-listed now."""
        arr = torch.as_tensor(ids).reshape(-1).cpu().numpy() if not isinstance(ids, np.ndarray) else ids
        return self.stats.deny_listed[arr]

    # ------------------------------------------------------------------ deny

    def deny_samples_with_predicate(self, fn: SamplePredicate) -> int:
        """Deny every sample for which ``fn(id, age, loss, times, denied, pred, label)`` is True.

        Never-seen samples get NaN for age, loss, pred and label. Deny
        accumulates: samples denied before stay denied.

        Returns:
            how many samples became denied.

        Raises:
            LedgerError: ``fn`` raised (the first failing id is named) or returned
                a non-bool; the result would deny every training sample.

        Example:
            >>> ds.deny_samples_with_predicate(lambda id, age, loss, times, denied, pred, label: loss <= 1.5)
        """
        target = np.flatnonzero(predicate_mask(fn, self.stats))
        return self._set_denied(target, True, {"mode": "predicate"})

    def deny_samples_and_sample_allowed_with_predicate(
        self, fn: SamplePredicate, allow_to_denied_factor: float, seed: int | None = None
    ) -> int:
        """Deny the matching samples but keep ``min(matching, k × non-matching)`` of them allowed.

        Args:
            fn: the 7-argument predicate, as for :meth:`deny_samples_with_predicate`.
            allow_to_denied_factor: ``k``, finite and >= 0.
            seed: seed of the random choice; when None, drawn from the seed source
                (:meth:`set_seed_source`) if one is set, else with ``secrets`` (the global
                torch/numpy generators are not touched). Recorded either way.

        The kept samples are left as they were (a kept sample denied earlier stays
        denied: deny accumulates).

        Returns:
            how many samples became denied.
        """
        factor = check_factor(allow_to_denied_factor)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ConfigurationError(f"seed must be an integer >= 0 or None, got {seed!r}")
        matching = np.flatnonzero(predicate_mask(fn, self.stats))
        if seed is None:
            seed = self._draw_seed()
        kept = sample_kept_allowed(matching, self._size - len(matching), factor, int(seed))
        target = np.setdiff1d(matching, kept, assume_unique=True)
        args = {"mode": "sampled", "allow_to_denied_factor": factor, "seed": int(seed)}
        return self._set_denied(target, True, args, {"matching": len(matching), "kept_allowed": len(kept)})

    def denylist_samples(self, ids: Ids) -> int:
        """Deny the samples ``ids``; returns how many became denied.

        Raises:
            LedgerError: ids not in the dataset (a few are named); denying every training sample.
            ConfigurationError: ``ids`` is not a collection of integers.
        """
        return self._set_denied(ids_to_array(ids, self._size), True, {"mode": "ids"})

    def deny_samples_where(self, query: str) -> int:
        """Deny the samples matching a pandas query over :meth:`get_dataframe`'s columns.

        Vectorised: orders of magnitude faster than a predicate on a large set.
        Null (NaN/<NA>) comparisons do not match, as for the predicate.

        Example:
            >>> ds.deny_samples_where("prediction_loss <= 1.5 and exposure_amount >= 2")
        """
        target = np.flatnonzero(query_mask(query, self.stats))
        return self._set_denied(target, True, {"mode": "where", "query": query})

    def apply_deny_ids(self, ids: Ids) -> int:
        """Deny exactly ``ids`` (re-executes a recorded deny from its ``args["ids"]``)."""
        return self.denylist_samples(ids)

    # ------------------------------------------------------------------ allow

    def allowlist_samples(self, ids: Ids | None) -> int:
        """Re-admit the samples ``ids``, or every sample when ``ids`` is None.

        Returns:
            how many samples became allowed.
        """
        if ids is None:
            return self._set_denied(np.arange(self._size, dtype=np.int64), False, {"mode": "all"})
        return self._set_denied(ids_to_array(ids, self._size), False, {"mode": "ids"})

    def allow_samples_where(self, query: str) -> int:
        """Re-admit the samples matching a pandas query (see :meth:`deny_samples_where`)."""
        target = np.flatnonzero(query_mask(query, self.stats))
        return self._set_denied(target, False, {"mode": "where", "query": query})

    def apply_allow_ids(self, ids: Ids) -> int:
        """Re-admit exactly ``ids`` (re-executes a recorded allow from its ``args["ids"]``)."""
        return self._set_denied(ids_to_array(ids, self._size), False, {"mode": "ids"})

    def apply_recorded(self, kind: str, args: Mapping[str, Any]) -> int:
        """Re-execute a recorded ``deny``/``allow`` from its ids (no predicate, no query, no RNG).

        Raises:
            ConfigurationError: ``kind`` is neither ``"deny"`` nor ``"allow"``, or ``args`` has no ``"ids"``.
        """
        if "ids" not in args:
            raise ConfigurationError(f"a recorded {kind!r} needs args['ids'], got keys {sorted(args)}")
        if kind == EventKind.DENY:
            return self.apply_deny_ids(args["ids"])
        if kind == EventKind.ALLOW:
            return self.apply_allow_ids(args["ids"])
        raise ConfigurationError(f"apply_recorded re-executes 'deny' or 'allow', got {kind!r}")

    # ------------------------------------------------------------------ the one place that writes

    def _set_denied(
        self,
        target: np.ndarray,
        denied: bool,
        args: dict[str, Any],
        extra_result: Mapping[str, Any] | None = None,
    ) -> int:
        stats = self.stats
        changed = target[stats.deny_listed[target] != denied]
        if (
            denied
            and self._split == "train"
            and len(changed)
            and len(changed) == self._size - int(stats.deny_listed.sum())
        ):
            raise LedgerError(
                f"this would deny all {self._size} training samples, and an empty training set cannot "
                "train; nothing was changed. Deny fewer samples (check the predicate or query), or "
                "allowlist some first"
            )
        record = OperationRecord(
            kind=EventKind.DENY if denied else EventKind.ALLOW,
            args={"ids": changed.tolist(), **args},
            result={"changed": len(changed), **(extra_result or {})},
        )
        dirty = stats.take_dirty_ids()  # read the dirty marks (put back at once), to restore them on rollback
        stats.mark_dirty(dirty)

        def rollback() -> None:
            stats.deny_listed[changed] = not denied
            stats.take_dirty_ids()
            stats.mark_dirty(dirty)

        stats.deny_listed[changed] = denied
        stats.mark_dirty(changed)
        self._observers.notify(record, rollback=rollback)
        return len(changed)

    # ------------------------------------------------------------------ state

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Copies of every statistic column, the deny mask (``deny_listed``) included.

        Plain numeric arrays (no objects), for content-addressed blobs.
        """
        return self.stats.state_arrays()

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays` exactly.

        Afterwards every sample is dirty (so the restored values reach SQL at the
        next flush) and the undrained pass history is discarded (it described the
        replaced state: drain it first to keep it). Observers are not notified:
        this restores state, it is not an operation.

        Raises:
            LedgerError: missing columns, wrong length or dtype; nothing is changed.
        """
        self.stats.load_state_arrays(arrays)
