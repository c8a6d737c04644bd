"""Neuron trigger tracking: which counters a forward pass updates, and the hot-path update.

A neuron *triggers* on a sample when its pre-activation output, averaged over the
spatial positions, is > 0 (SPEC §3). The update runs on every tracked forward of
every layer, so it is a handful of vectorised kernels on the layer's device: no
``.item()``, no host synchronisation, no Python loop over neurons or samples.

Inside a training or evaluation loop the network can batch the counting
(:meth:`NetworkWithOps.batched_trigger_counts`): each forward then only computes
its ``[N, C]`` spatial sums, and the comparison, count and counter updates run
once for many forwards. Counts are integers, so the result is the same.
"""

from __future__ import annotations

from enum import Enum

import torch

__all__ = ["TrackingMode", "count_positive", "spatial_sums"]


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
            linear layers (``channel_dim=-1``).
        channel_dim: the dimension holding the neurons.

    The sign of the spatial sum equals the sign of the spatial mean, so the sum
    (one kernel cheaper) decides the trigger.
    """
    y = output.detach()
    if y.dim() > 2:
        return y.flatten(2).sum(2) if channel_dim == 1 else y.reshape(y.shape[0], -1, y.shape[-1]).sum(1)
    return y


def count_positive(sums: torch.Tensor) -> torch.Tensor:
    """Per-neuron number of rows of ``sums`` (``[N, C]``, see :func:`spatial_sums`) that are > 0 (int64 ``[C]``)."""
    return (sums > 0).sum(0)

