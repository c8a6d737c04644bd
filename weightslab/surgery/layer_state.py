"""What an ops layer keeps besides its tensors, and what it asks of the network that owns it.

The per-neuron values (counters, learning-rate multipliers, birth steps, the
frozen flag) are registered buffers: they are the checkpoint. :class:`LayerState`
holds the rest, host-side and never in a state dict: the tracking mode, the
tracer while the network is traced, summaries of the buffers that the optimizer's
step hooks read without a device sync, the sums kept by batched counting, and a
weak reference to the :class:`LayerOwner` (the owning network's surgery), so that
an operation invoked on a layer is applied and recorded by its network.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from weightslab.surgery.tracking import PendingSums, TrackingMode

__all__ = ["LayerOwner", "LayerState"]


class LayerOwner(Protocol):
    """What an ops layer asks of the network that owns it (its :class:`~weightslab.surgery.operations.Surgery`)."""

    def set_layer_learning_rate(self, layer: Any, neuron_indices: Iterable[int], lr: float, *, incoming: bool) -> None:
        """Apply and record a per-neuron (or per-incoming-neuron) learning rate of ``layer``."""

    def invalidate_step_targets(self) -> None:
        """Forget which parameters the optimizer's step hooks must adjust (a layer's multipliers changed)."""


@dataclass(eq=False)
class LayerState:
    """The host-side state of one ops layer (one attribute of the layer).

    Attributes:
        mode: which counters a forward pass updates (set by the owning network).
        trace: the tracer while the owning network is traced, else None.
        lr_active: some learning-rate multiplier of the layer is not 1.
        max_birth: the latest optimizer step at which a row or column was (re)born.
        mult_cache: per parameter name, the expanded multiplier of its update.
        pending: the spatial sums kept by batched counting, or None outside it.
        owner: weak reference to the owning network's surgery, or None.
    """

    mode: TrackingMode = TrackingMode.DISABLED
    trace: Any = None
    lr_active: bool = False
    max_birth: int = 0
    mult_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: PendingSums | None = None
    owner: weakref.ref[LayerOwner] | None = None

    def owning_surgery(self) -> LayerOwner | None:
        """The owner, if the layer belongs to a live network."""
        return self.owner() if self.owner is not None else None

    def caches(self) -> tuple[bool, int, dict[str, torch.Tensor]]:
        """The buffer summaries, to put back with :meth:`restore_caches`."""
        return self.lr_active, self.max_birth, self.mult_cache

    def restore_caches(self, caches: tuple[bool, int, dict[str, torch.Tensor]]) -> None:
        """Put back summaries taken by :meth:`caches` (when an operation is rolled back)."""
        self.lr_active, self.max_birth, self.mult_cache = caches

    def __getstate__(self) -> dict[str, Any]:
        # A copy must not route to the original network (the owning network re-binds its layers
        # when it is copied), and a weak reference cannot be pickled; caches are rebuilt lazily.
        return {"mode": self.mode, "lr_active": self.lr_active, "max_birth": self.max_birth}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.mode, self.lr_active, self.max_birth = state["mode"], state["lr_active"], state["max_birth"]
        self.trace, self.mult_cache, self.pending, self.owner = None, {}, None, None
