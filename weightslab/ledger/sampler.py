"""The sampler: draws only allowed samples, in an order that can be saved and restored.

At the start of each epoch it draws ``allowed_ids[torch.randperm(n_allowed)]``
from its own generator, so an epoch with some samples denied is the same, batch
for batch, as an epoch over a dataset with those samples removed (same seed).
A sample denied mid-epoch is skipped when its turn comes; a sample allowed
mid-epoch joins at the next epoch.

The state (generator, the epoch's permutation, how far into it the sampler
got, epoch count) is a handful of numeric arrays, restored exactly. A
DataLoader with workers reads ahead of training, so the sampler's own position
can run ahead of the samples actually trained on; :meth:`LedgerSampler.seek`
and :meth:`LedgerSampler.position_after` let the caller set the position it
knows to be true.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Sampler

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger.dataset import LedgeredDataset

__all__ = ["LedgerSampler"]

_STATE_KEYS = ("seed", "shuffle", "generator_state", "permutation", "in_epoch", "consumed", "epoch")


class LedgerSampler(Sampler[int]):
    """A sampler over the allowed ids of a :class:`LedgeredDataset`.

    Args:
        dataset: the wrapper whose deny list it honours.
        seed: seed of the sampler's own ``torch.Generator`` (the global RNG is untouched).
        shuffle: draw a fresh permutation each epoch (False: ascending ids).

    ``len(sampler)`` is the number of allowed samples now, so
    ``len(DataLoader(ds, batch_size=b, sampler=sampler))`` counts allowed batches.

    Example:
        >>> loader = DataLoader(ds, batch_size=256, sampler=LedgerSampler(ds, seed=0))
    """

    def __init__(self, dataset: LedgeredDataset, seed: int, shuffle: bool = True) -> None:
        if not isinstance(dataset, LedgeredDataset):
            raise ConfigurationError(
                f"LedgerSampler samples a LedgeredDataset, got {type(dataset).__name__}; "
                "wrap it first: LedgeredDataset(dataset, 'train')"
            )
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ConfigurationError(f"seed must be an integer, got {seed!r}")
        super().__init__()
        self._dataset = dataset
        self._seed = int(seed)
        self._shuffle = bool(shuffle)
        self._generator = torch.Generator()
        self._generator.manual_seed(self._seed)
        self._perm: np.ndarray | None = None  # the current epoch's order (read-only int64); None between epochs
        self._consumed = 0  # positions of _perm handed out or skipped
        self._epoch = 0  # epochs started
        #: What the current order was drawn from (generator state, or None for ascending ids; dataset size),
        #: so that a dump can store it instead of the order (see :meth:`order_source`); None when unknown.
        self._order_source: tuple[np.ndarray | None, int] | None = None

    # ------------------------------------------------------------------ sampling

    def __len__(self) -> int:
        return len(self._dataset) - int(self._dataset.stats.deny_listed.sum())

    @property
    def epoch(self) -> int:
        """How many epochs have started (the first epoch is 1)."""
        return self._epoch

    @property
    def consumed(self) -> int:
        """Positions of the current epoch's permutation already handed out or skipped."""
        return self._consumed

    def __iter__(self) -> Iterator[int]:
        if self._perm is None or self._consumed >= len(self._perm):
            self._start_epoch()
        perm = self._perm
        assert perm is not None
        order = perm.tolist()  # Python ints: one conversion per iterator, not one per sample
        stats = self._dataset.stats
        while self._consumed < len(order):
            if self._perm is not perm:
                raise LedgerError(
                    "the sampler's state was restored or a new epoch began while this iterator was "
                    "running; start a new iterator (iter(loader)) to continue from the restored state"
                )
            i = order[self._consumed]
            self._consumed += 1
            if stats.deny_listed[i]:  # denied after the epoch began: skip it now
                continue
            yield i
        if self._perm is perm:  # the epoch is over
            self._perm, self._consumed = None, 0

    def next_batch(self, size: int) -> np.ndarray:
        """The next ``size`` ids (fewer at the end of an epoch) as one int64 array, without Python per sample.

        The ids, the batches' boundaries and the state after each batch (position, epoch, generator) are
        those a DataLoader's ``BatchSampler(sampler, size, drop_last=False)`` draws from an iterator of this
        sampler: samples denied since the epoch began are skipped, an epoch's last batch may be short, and a
        new epoch starts (its order is drawn) when a batch finds the current one used up.

        Raises:
            ConfigurationError: ``size`` < 1.
            StopIteration: a new epoch holds no allowed sample either (as the iterator would).
        """
        if size < 1:
            raise ConfigurationError(f"a batch needs a size >= 1, got {size}")
        denied = self._dataset.stats.deny_listed
        for _ in range(2):  # the rest of this epoch; if it holds no allowed sample, a new epoch (a new iterator)
            if self._perm is None or self._consumed >= len(self._perm):
                self._start_epoch()
            perm = self._perm
            assert perm is not None
            parts, need = [], size
            while need and self._consumed < len(perm):
                window = perm[self._consumed:self._consumed + need]
                self._consumed += len(window)  # a denied sample's position counts as used, as when skipped
                out = denied[window]
                kept = window[~out] if np.count_nonzero(out) else window
                parts.append(kept)
                need -= len(kept)
            if need:  # the epoch ran out before the batch was full: it is over
                self._perm, self._consumed = None, 0
            if need < size:
                out = parts[0] if len(parts) == 1 else np.concatenate(parts)
                return out if out.flags.writeable else out.copy()
        raise StopIteration

    def _start_epoch(self) -> None:
        allowed = torch.from_numpy(self._dataset.allowed_ids())
        self._order_source = (self._generator.get_state().numpy() if self._shuffle else None, len(self._dataset))
        if self._shuffle:
            allowed = allowed[torch.randperm(len(allowed), generator=self._generator)]
        self._perm = _frozen(allowed.numpy())
        self._consumed = 0
        self._epoch += 1

    # ------------------------------------------------------------------ position

    def seek(self, consumed: int) -> None:
        """Set how many positions of the current epoch's permutation count as used.

        The next iterator continues at position ``consumed``. With DataLoader
        workers the sampler runs ahead of training; seek to what was trained on.

        Raises:
            LedgerError: no epoch in progress, or ``consumed`` outside ``0..len(permutation)``.
        """
        if self._perm is None:
            raise LedgerError("no epoch is in progress, so there is no position to seek; iterate first")
        if isinstance(consumed, bool) or not isinstance(consumed, numbers.Integral):
            raise ConfigurationError(f"consumed must be an integer, got {consumed!r}")
        if not 0 <= consumed <= len(self._perm):
            raise LedgerError(f"consumed must lie in 0..{len(self._perm)} for this epoch, got {consumed}")
        self._consumed = int(consumed)

    def position_after(self, sample_id: int) -> int:
        """The position just after ``sample_id`` in the current epoch's permutation (for :meth:`seek`).

        Raises:
            LedgerError: no epoch in progress, or the id is not in this epoch's permutation.
        """
        if self._perm is None:
            raise LedgerError("no epoch is in progress; iterate first")
        hits = np.flatnonzero(self._perm == int(sample_id))
        if len(hits) == 0:
            raise LedgerError(f"sample id {sample_id} is not in the current epoch's permutation")
        return int(hits[0]) + 1

    # ------------------------------------------------------------------ state

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The sampler's full state as numeric arrays (no pickle).

        Keys: ``seed``, ``shuffle``, ``generator_state`` (uint8: the generator
        after the current epoch's draw), ``permutation`` (int64, empty between
        epochs), ``in_epoch`` (bool), ``consumed``, ``epoch`` (int64 scalars).
        """
        return {
            "seed": np.array(self._seed, np.int64),
            "shuffle": np.array(self._shuffle, np.bool_),
            "generator_state": self._generator.get_state().numpy().copy(),
            "permutation": self._perm if self._perm is not None else np.zeros(0, np.int64),  # read-only
            "in_epoch": np.array(self._perm is not None, np.bool_),
            "consumed": np.array(self._consumed, np.int64),
            "epoch": np.array(self._epoch, np.int64),
        }

    def order_source(self) -> tuple[np.ndarray | None, int] | None:
        """What the current epoch's order was drawn from: (the generator's state before the draw, or None
        when the order is the allowed ids ascending; the dataset's size). The order is
        ``allowed_ids[torch.randperm(len(allowed_ids), generator)]`` of those ids, so a dump stores the
        state and the id set instead of the order (:func:`weightslab.history.tensorcodec.encode_compact`
        checks that they regenerate it). None between epochs, or when the state was restored."""
        return self._order_source if self._perm is not None else None

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays` exactly: the next iterator continues with the same order.

        An iterator started before the restore stops with a :class:`LedgerError`
        when next advanced (start a new one).

        Raises:
            LedgerError: missing keys, a malformed generator state, a permutation
                with ids outside the dataset or a position beyond it; nothing is changed.
        """
        missing = [k for k in _STATE_KEYS if k not in arrays]
        if missing:
            raise LedgerError(f"sampler state lacks {missing}; pass the dict state_arrays() returned")
        generator = torch.Generator()
        try:
            generator.set_state(torch.from_numpy(np.ascontiguousarray(arrays["generator_state"], np.uint8)))
        except (RuntimeError, TypeError, ValueError) as e:
            raise LedgerError(f"sampler state has a malformed generator_state: {e}") from e
        perm = np.asarray(arrays["permutation"]).astype(np.int64, casting="same_kind").reshape(-1)
        in_epoch = bool(np.asarray(arrays["in_epoch"]))
        consumed = int(np.asarray(arrays["consumed"]))
        if len(perm) and (perm.min() < 0 or perm.max() >= len(self._dataset)):
            raise LedgerError(
                f"sampler state's permutation names ids outside 0..{len(self._dataset) - 1}: "
                "it was saved for another dataset"
            )
        if not 0 <= consumed <= (len(perm) if in_epoch else 0):
            raise LedgerError(
                f"sampler state's consumed={consumed} lies outside its permutation of {len(perm)}"
            )
        self._seed = int(np.asarray(arrays["seed"]))
        self._shuffle = bool(np.asarray(arrays["shuffle"]))
        self._generator = generator
        self._perm = _frozen(perm.copy()) if in_epoch else None
        self._order_source = None  # a dump finds it again from the order itself (history/tensorcodec.py)
        self._consumed = consumed
        self._epoch = int(np.asarray(arrays["epoch"]))


def _frozen(perm: np.ndarray) -> np.ndarray:
    """The permutation as a read-only int64 array: state_arrays hands it out without a copy."""
    out = np.ascontiguousarray(perm, dtype=np.int64)
    out.flags.writeable = False
    return out
