"""Neuron trigger tracking: which counters a forward pass updates, and the hot-path update.

A neuron *triggers* on a sample when its pre-activation output, averaged over the
spatial positions, is > 0 (SPEC §3). The update runs on every tracked forward of
every layer, so it is a handful of vectorised kernels on the layer's device: no
``.item()``, no host synchronisation, no Python loop over neurons or samples.
"""

from __future__ import annotations

from enum import Enum

import torch

__all__ = ["TrackingMode", "count_triggers"]


class TrackingMode(Enum):
    """Which neuron counters a forward pass updates.

    ``TRAIN`` and ``EVAL`` select the train or eval counters; ``DISABLED`` updates none.
    The Experiment switches the mode around its train and eval loops.
    """

    DISABLED = "disabled"
    TRAIN = "train"
    EVAL = "eval"


def count_triggers(output: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-neuron number of samples of ``output`` on which the neuron triggered.

    Args:
        output: a layer's pre-activation output, batch first: ``[N, C, *spatial]``
            for convolutions and batch norm (``channel_dim=1``) or ``[N, *, F]`` for
            linear layers (``channel_dim=-1``).
        channel_dim: the dimension holding the neurons.

    Returns:
        An int64 tensor ``[C]`` on ``output``'s device.

    The sign of the spatial sum equals the sign of the spatial mean, so the sum
    (one kernel cheaper) decides the trigger.
    """
    y = output.detach()
    if y.dim() > 2:
        y = y.flatten(2).sum(2) if channel_dim == 1 else y.reshape(y.shape[0], -1, y.shape[-1]).sum(1)
    return (y > 0).sum(0)
