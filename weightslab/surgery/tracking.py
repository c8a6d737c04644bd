"""Neuron trigger tracking: which counters a forward pass updates, and the hot-path update.

A neuron *triggers* on a sample when its pre-activation output, averaged over the
spatial positions, is > 0 (SPEC §3). The update runs on every tracked forward of
every layer, so it is a handful of vectorised kernels on the layer's device: no
``.item()``, no host synchronisation, no Python loop over neurons or samples.

Inside a training or evaluation loop the network can batch the counting
(:meth:`NetworkWithOps.batched_trigger_counts`): each forward then only computes
its ``[N, C]`` spatial sums (:class:`PendingSums` keeps them), and the comparison,
count and counter updates run once for many forwards. Counts are integers, so the
result is the same. On the CPU the comparison and count run in numpy, several
times faster than torch's float-to-bool comparison there.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch

__all__ = ["PendingSums", "TrackingMode", "count_positive", "spatial_sums"]


class TrackingMode(Enum):
    """Which neuron counters a forward pass updates.

    ``TRAIN`` and ``EVAL`` select the train or eval counters; ``DISABLED`` updates none.
    The Experiment switches the mode around its train and eval loops.
    """

    DISABLED = "disabled"
    TRAIN = "train"
    EVAL = "eval"


def spatial_sums(output: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-sample, per-neuron sum of ``output`` over its spatial positions: ``[N, C]``, detached.

    Args:
        output: a layer's pre-activation output, batch first: ``[N, C, *spatial]``
            for convolutions and batch norm (``channel_dim=1``) or ``[N, *, F]`` for
            linear layers (``channel_dim=-1``); a 1-d output is one sample.
        channel_dim: the dimension holding the neurons.

    The sign of the spatial sum equals the sign of the spatial mean, so the sum
    (one kernel cheaper) decides the trigger. Where there is one position (a linear
    layer's ``[N, F]``, a 1×1 feature map) the output is its own sum: the result is
    then a view of ``output``, and changes with it.
    """
    y = output.detach()
    dims = y.dim()
    if dims > 2:
        if channel_dim == 1:
            parts = y.flatten(2)
            if parts.shape[2] != 1:
                return parts.sum(2)
        else:
            parts = y.reshape(y.shape[0], -1, y.shape[-1])
            if parts.shape[1] != 1:
                return parts.sum(1)
        return y.reshape(y.shape[0], -1)
    return y if dims == 2 else y.reshape(1, -1)


# A uint8 sum of 0/1 rows cannot overflow within 255 rows: blocks of that many rows are added
# exactly in uint8 (32 lanes to an AVX2 add), and the per-block counts in int64.
_BLOCK_ROWS = 255


def count_positive(sums: torch.Tensor) -> torch.Tensor:
    """Per-neuron number of rows of ``sums`` (``[N, C]``, see :func:`spatial_sums`) that are > 0 (int64 ``[C]``).

    On the CPU the comparison runs in numpy (vectorised; torch's float-to-bool comparison is
    ~10x slower there) and the 0/1 rows are added as uint8 in blocks of 255 rows, which
    cannot overflow, then the blocks' counts as int64: exact for any number of rows. NaN is
    not > 0, as in torch. Elsewhere it is torch's ``(sums > 0).sum(0)``.
    """
    if sums.device.type != "cpu" or sums.dtype not in (torch.float32, torch.float64) or sums.shape[0] == 0:
        return (sums > 0).sum(0)
    mask = np.greater(sums.detach().numpy(), 0).view(np.uint8)
    rows, width = mask.shape
    if rows <= _BLOCK_ROWS:
        return torch.from_numpy(np.add.reduce(mask, axis=0, dtype=np.uint8).astype(np.int64))
    whole = rows - rows % _BLOCK_ROWS
    blocks = np.add.reduce(mask[:whole].reshape(whole // _BLOCK_ROWS, _BLOCK_ROWS, width), axis=1, dtype=np.uint8)
    counts = np.add.reduce(blocks, axis=0, dtype=np.int64)
    if whole < rows:
        counts += np.add.reduce(mask[whole:], axis=0, dtype=np.uint8)
    return torch.from_numpy(counts)


class PendingSums:
    """The spatial sums of many forwards of one layer, kept to be counted at once.

    Batched counting (:meth:`NetworkWithOps.batched_trigger_counts`) keeps each tracked
    forward's ``[N, C]`` sums (:func:`spatial_sums`) and counts them together. :meth:`add`
    refuses sums that do not fit with the kept ones (another width, dtype or device):
    count the kept ones (:meth:`take`) and add them again. :attr:`full` says when to
    count: after ``max_forwards`` forwards or ``max_elements`` kept values. The defaults
    bound the kept sums to ~1 MiB (float32) a layer: ~40 MiB for the 41 layers of a
    ResNet-18 at batch 64, whose activations take far more.
    """

    __slots__ = ("_sums", "_elements", "max_forwards", "max_elements")

    def __init__(self, max_forwards: int = 64, max_elements: int = 1 << 18) -> None:
        self._sums: list[torch.Tensor] = []
        self._elements = 0
        self.max_forwards = max_forwards
        self.max_elements = max_elements

    def add(self, sums: torch.Tensor, output: torch.Tensor) -> bool:
        """Keep ``sums`` (of ``output``); False (nothing kept) when they do not fit with the kept ones.

        Sums that are a view of the output are copied: the forward may still change it in place
        (``relu_``, ``+=``).
        """
        kept = self._sums
        if kept:
            first = kept[0]
            if sums.shape[1] != first.shape[1] or sums.dtype != first.dtype or sums.device != first.device:
                return False
        if sums.data_ptr() == output.data_ptr():
            sums = sums.clone()
        kept.append(sums)
        self._elements += sums.numel()
        return True

    @property
    def full(self) -> bool:
        """Whether the kept sums are due to be counted."""
        return len(self._sums) >= self.max_forwards or self._elements >= self.max_elements

    def __len__(self) -> int:
        """Number of forwards kept and not yet counted."""
        return len(self._sums)

    def take(self) -> torch.Tensor | None:
        """The kept sums as one ``[rows, C]`` tensor, now no longer kept; None if none."""
        kept = self._sums
        if not kept:
            return None
        sums = kept[0] if len(kept) == 1 else torch.cat(kept)
        kept.clear()
        self._elements = 0
        return sums
