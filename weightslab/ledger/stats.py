"""Per-sample statistics: one numpy array per column, indexed by sample id.

Memory is 26 bytes a sample (age int64, loss float32, exposure/prediction/label
int32, deny and dirty flags one byte each), plus 20 bytes a row in the pass log
until the Experiment drains it. A sample is *null* (never seen: no loss, age,
prediction or label) exactly while its ``exposure_amount`` is 0, so no sentinel
value is stolen from the label space.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from weightslab.errors import ConfigurationError, LedgerError
from weightslab.ledger.pass_log import PassLog

__all__ = ["STAT_COLUMNS", "SampleStats"]

#: Statistic columns, in DataFrame / SQL order, with their storage dtypes.
STAT_COLUMNS: dict[str, np.dtype] = {
    "prediction_age": np.dtype(np.int64),
    "prediction_loss": np.dtype(np.float32),
    "exposure_amount": np.dtype(np.int32),
    "deny_listed": np.dtype(np.bool_),
    "prediction": np.dtype(np.int32),
    "label": np.dtype(np.int32),
}

#: Columns that are null (NaN) while a sample has never been seen (the label: unless labels are known).
_NULL_BEFORE_SEEN = frozenset({"prediction_age", "prediction_loss", "prediction", "label"})


class SampleStats:
    """The statistic columns of one split, their dirty mask and their pass log.

    Args:
        size: number of samples (ids are ``0 .. size-1``).

    Attributes (numpy arrays of length ``size``, see :data:`STAT_COLUMNS`):
        prediction_age, prediction_loss, exposure_amount, deny_listed, prediction, label.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ConfigurationError(f"a ledger needs a size >= 0, got {size}")
        self.size = size
        self.prediction_age = np.zeros(size, np.int64)
        self.prediction_loss = np.full(size, np.nan, np.float32)
        self.exposure_amount = np.zeros(size, np.int32)
        self.deny_listed = np.zeros(size, np.bool_)
        self.prediction = np.zeros(size, np.int32)
        self.label = np.zeros(size, np.int32)
        self._dirty = np.zeros(size, np.bool_)
        self._log = PassLog(np.int32 if size <= np.iinfo(np.int32).max else np.int64)
        #: Every sample's label was read when the experiment was created (:meth:`record_labels`); otherwise
        #: a label is known once its sample has been seen.
        self.labels_known = False

    def record_labels(self, labels: np.ndarray) -> None:
        """Know every sample's label from the start (read from the dataset when the experiment is created).

        Raises:
            LedgerError: not one integer label per sample (nothing is changed).
        """
        values = np.asarray(labels)
        if values.shape != (self.size,) or values.dtype.kind not in "iub":
            raise LedgerError(f"record_labels needs one integer label per sample ({self.size}), got "
                              f"{values.dtype} {values.shape}")
        if len(values) and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
            raise LedgerError("labels must fit in 32-bit integers (classification)")
        self.label = values.astype(np.int32)
        self.labels_known = True

    def label_unknown(self) -> np.ndarray:
        """Bool mask of samples whose label is not known (never seen, when labels were not read up front)."""
        return np.zeros(self.size, np.bool_) if self.labels_known else self.exposure_amount == 0

    # ------------------------------------------------------------------ update

    def update_batch(
        self,
        ids: torch.Tensor,
        losses: torch.Tensor,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        model_age: int | np.ndarray,
    ) -> None:
        """Record one batch of predictions: O(batch), vectorised, no Python loop over samples.

        Args:
            ids: sample ids, shape ``(B,)`` (the third element of each item).
            losses: per-sample losses (``reduction="none"``), shape ``(B,)``.
            predictions: predicted classes, shape ``(B,)``.
            labels: true labels, shape ``(B,)``.
            model_age: training samples the model had processed when it predicted: one age,
                or an int64 array of one per sample (several batches recorded at once).

        Tensors may live on any device; the batch crosses to the CPU in one copy of
        the integers and one of the losses.
        A sample id appearing twice in one batch counts two exposures; its
        loss/prediction are those of its last occurrence.

        Raises:
            ConfigurationError: tensors of different lengths.
            LedgerError: an id outside ``0 .. size-1``.
        """
        ids_np, loss_np, pred_np, label_np = _batch_to_numpy(ids, losses, predictions, labels)
        n = len(ids_np)
        if not (len(loss_np) == len(pred_np) == len(label_np) == n):
            raise ConfigurationError(
                "update_batch needs ids, losses, predictions and labels of the same length, got "
                f"{n}, {len(loss_np)}, {len(pred_np)}, {len(label_np)}; pass per-sample losses "
                "(reduction='none')"
            )
        if isinstance(model_age, np.ndarray) and model_age.shape != (n,):
            raise ConfigurationError(f"model_age must be one age or one per sample ({n}), got shape {model_age.shape}")
        if n == 0:
            return
        lo, hi = ids_np.min(), ids_np.max()
        if lo < 0 or hi >= self.size:
            raise LedgerError(
                f"sample ids must lie in 0..{self.size - 1}, got ids from {lo} to {hi}; "
                "pass the ids the dataset wrapper returned with the batch"
            )
        self.prediction_loss[ids_np] = loss_np
        self.prediction[ids_np] = pred_np
        self.label[ids_np] = label_np
        self.prediction_age[ids_np] = model_age
        if _distinct(ids_np):  # a batch from a sampler: each id once, a plain (much faster) increment
            self.exposure_amount[ids_np] += 1
        else:
            np.add.at(self.exposure_amount, ids_np, 1)
        self._dirty[ids_np] = True
        self._log.append(ids_np, model_age, loss_np, pred_np)

    def mark_dirty(self, ids: np.ndarray) -> None:
        """Flag ``ids`` as changed since the last :meth:`take_dirty_ids`."""
        self._dirty[ids] = True

    def take_dirty_ids(self) -> np.ndarray:
        """Ids whose statistics changed since the last call (sorted int64), then clear the flags."""
        ids = np.flatnonzero(self._dirty)
        self._dirty[ids] = False
        return ids

    def drain_history(self) -> dict[str, np.ndarray]:
        """Rows ``sample_id, model_age, loss, prediction`` appended since the last drain."""
        return self._log.drain()

    # ------------------------------------------------------------------ views

    def seen(self) -> np.ndarray:
        """Bool mask of samples with at least one recorded prediction."""
        return self.exposure_amount > 0

    def allowed_ids(self) -> np.ndarray:
        """Sorted ids not deny-listed (int64)."""
        return np.flatnonzero(~self.deny_listed)

    def frame_column(self, name: str) -> np.ndarray | pd.api.extensions.ExtensionArray:
        """One column as :meth:`to_dataframe` shows it (a fresh copy; null is NaN / <NA>).

        ``prediction_age`` and ``prediction_loss`` are float64 with NaN,
        ``exposure_amount`` int64, ``deny_listed`` bool, ``prediction`` and
        ``label`` nullable Int64, ``sample_id`` the int64 ids.
        """
        if name == "sample_id":
            return np.arange(self.size, dtype=np.int64)
        if name not in STAT_COLUMNS:
            raise KeyError(name)
        unseen = self.exposure_amount == 0
        if name in ("prediction_age", "prediction_loss"):
            values = getattr(self, name).astype(np.float64)
            values[unseen] = np.nan
            return values
        if name == "label":
            return pd.arrays.IntegerArray(self.label.astype(np.int64), self.label_unknown())
        if name == "prediction":
            return pd.arrays.IntegerArray(self.prediction.astype(np.int64), unseen)
        return getattr(self, name).astype(np.int64 if name == "exposure_amount" else np.bool_)

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The ``sample_stats`` rows of ``ids``: ``sample_id`` and every column of :data:`STAT_COLUMNS`,
        as fresh arrays; float columns hold NaN for null (a never-seen sample's age, loss, prediction
        and label)."""
        unseen = self.exposure_amount[ids] == 0
        no_label = unseen if not self.labels_known else np.zeros_like(unseen)
        out: dict[str, np.ndarray] = {"sample_id": np.asarray(ids, dtype=np.int64)}
        for name in STAT_COLUMNS:
            values = getattr(self, name)[ids]
            if name in _NULL_BEFORE_SEEN:
                values = values.astype(np.float64)
                values[no_label if name == "label" else unseen] = np.nan
            out[name] = values
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """The columns as a DataFrame indexed by ``sample_id``; null is NaN / <NA>."""
        columns = {name: self.frame_column(name) for name in STAT_COLUMNS}
        return pd.DataFrame(columns, index=pd.RangeIndex(self.size, name="sample_id"), copy=False)

    # ------------------------------------------------------------------ state

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Copies of every column (the deny mask is ``deny_listed``)."""
        return {name: getattr(self, name).copy() for name in STAT_COLUMNS}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace every column with ``arrays`` (as from :meth:`state_arrays`), exactly.

        The samples whose values this changes are marked dirty (their restored
        values must reach SQL; samples already dirty stay dirty), and the
        undrained pass log is discarded (its rows described the replaced
        state; drain it first to keep them).

        Raises:
            LedgerError: a column missing, of another length, or not castable
                without loss to its dtype; nothing is changed then.
        """
        missing = sorted(set(STAT_COLUMNS) - set(arrays))
        if missing:
            raise LedgerError(f"ledger state lacks columns {missing}; pass the dict state_arrays() returned")
        loaded: dict[str, np.ndarray] = {}
        for name, dtype in STAT_COLUMNS.items():
            value = np.asarray(arrays[name])
            if value.shape != (self.size,):
                raise LedgerError(
                    f"ledger state column {name!r} has shape {value.shape}, expected ({self.size},): "
                    "it was saved from a dataset of another size"
                )
            if not np.can_cast(value.dtype, dtype, casting="safe"):
                raise LedgerError(f"ledger state column {name!r} has dtype {value.dtype}, expected {dtype}")
            loaded[name] = value.astype(dtype, copy=True)
        for name, value in loaded.items():
            self._dirty |= _differs(getattr(self, name), value)
            setattr(self, name, value)
        self._log.clear()

    def nbytes(self) -> int:
        """Bytes held by the columns, the dirty mask and the pass log."""
        cols = sum(getattr(self, name).nbytes for name in STAT_COLUMNS)
        return cols + self._dirty.nbytes + self._log.nbytes()


def _distinct(ids: np.ndarray) -> bool:
    """Whether no id occurs twice."""
    if len(ids) < 2:
        return True
    ordered = np.sort(ids)
    return bool((ordered[1:] != ordered[:-1]).all())


def _differs(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Element-wise: do the bits differ (NaN equals NaN of the same payload; -0.0 differs from 0.0)?"""
    if old.dtype.kind == "f":
        as_int = np.dtype(f"u{old.dtype.itemsize}")
        return old.view(as_int) != new.view(as_int)
    return old != new


def _batch_to_numpy(
    ids: torch.Tensor, losses: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Copy a batch's tensors to 1-D CPU numpy arrays, without autograd.

    On an accelerator the three integer tensors travel in one stacked copy, so a
    batch costs two device-to-host transfers (integers, losses), not four.
    """
    if all(type(t) is torch.Tensor and t.device.type == "cpu" and t.dim() == 1 and not t.requires_grad
           for t in (ids, losses, predictions, labels)) and losses.dtype not in (torch.bfloat16, torch.float16):
        return ids.numpy(), losses.numpy(), predictions.numpy(), labels.numpy()  # the common case: views
    ids, losses, predictions, labels = (
        torch.as_tensor(t).detach().reshape(-1) for t in (ids, losses, predictions, labels)
    )
    if losses.dtype in (torch.bfloat16, torch.float16):
        losses = losses.float()
    device = ids.device
    same_device = predictions.device == device and labels.device == device
    if device.type != "cpu" and same_device and len(ids) == len(predictions) == len(labels):
        ints = torch.stack([ids.long(), predictions.long(), labels.long()]).cpu().numpy()
        return ints[0], losses.cpu().numpy(), ints[1], ints[2]
    return ids.cpu().numpy(), losses.cpu().numpy(), predictions.cpu().numpy(), labels.cpu().numpy()
