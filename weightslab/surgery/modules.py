"""The ``*WithNeuronOps`` layers: torch layers that carry their per-neuron state.

Everything per neuron lives in registered buffers, so ``model.state_dict()`` holds
it and a checkpoint restores it: trigger counters and seen-sample counts (train
and eval), learning-rate multipliers per neuron (rows) and per incoming neuron
(columns), the optimizer step at which each row/column was (re)born (for Adam's
bias correction of fresh moments), and a frozen flag.

Everything else a layer keeps (tracking mode, buffer summaries, the weak
reference to the network that owns it) is one :class:`LayerState`; an operation
invoked on a layer goes to its network's surgery, which applies and records it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from weightslab.errors import ConfigurationError
from weightslab.surgery.layer_state import LayerState
from weightslab.surgery.selection import check_multiplier, check_neuron_indices
from weightslab.surgery.tracking import PendingSums, TrackingMode, count_positive, spatial_sums

__all__ = [
    "BatchNorm2dWithNeuronOps",
    "Conv2dWithNeuronOps",
    "LinearWithNeuronOps",
    "NeuronLayer",
    "Slot",
    "counter_slots",
    "row_col_slots",
]

COUNTER_NAMES = ("train_trigger_count", "train_seen_count", "eval_trigger_count", "eval_seen_count")


@dataclass(frozen=True)
class Slot:
    """One tensor of a layer and how it follows the layer's neurons.

    Attributes:
        name: attribute name of the parameter or buffer.
        row_dim: dimension indexed by the layer's neurons (None: not per neuron).
        col_dim: dimension indexed by incoming neurons (None: none).
        row_fill: value of new rows: a number, ``"init"`` (drawn like the
            initializer) or ``"step"`` (the optimizer step at birth).
        col_fill: value of new columns (a number or ``"step"``).
        blocks: the rows are this many blocks stacked, each indexed by the neurons (a recurrent
            layer's gates: neuron h is row h of every block).
        own_cols: the columns are indexed by the layer's own neurons (a recurrent weight), not
            by incoming ones.
    """

    name: str
    row_dim: int | None
    col_dim: int | None = None
    row_fill: float | str = 0.0
    col_fill: float | str = 0.0
    blocks: int = 1
    own_cols: bool = False


class NeuronLayer:
    """Mixin of the ops layers (placed before the torch layer class in the bases)."""

    channel_dim: int = 1
    out_attr: str = ""
    in_attr: str | None = None
    _layer_state: LayerState

    # -- construction ---------------------------------------------------------------------------------------

    def _init_neuron_state(self) -> None:
        module: Any = self
        self._reset_neuron_state()
        self._layer_state = LayerState()
        module.register_load_state_dict_pre_hook(_before_load)
        module.register_load_state_dict_post_hook(_after_load)

    def _reset_neuron_state(self) -> None:
        """(Re)create the per-neuron buffers for the current widths, on the parameters' device."""
        module: Any = self
        out_width = self.neuron_count
        in_width = self.incoming_count
        device = next(iter(module.parameters()), torch.zeros(0)).device
        for name in COUNTER_NAMES:
            module.register_buffer(name, torch.zeros(out_width, dtype=torch.int64, device=device))
        module.register_buffer("lr_row_multiplier", torch.ones(out_width, dtype=torch.float64, device=device))
        module.register_buffer("lr_col_multiplier", torch.ones(in_width, dtype=torch.float64, device=device))
        module.register_buffer("row_birth_step", torch.zeros(out_width, dtype=torch.int64, device=device))
        module.register_buffer("col_birth_step", torch.zeros(in_width, dtype=torch.int64, device=device))
        module.register_buffer("frozen", torch.zeros((), dtype=torch.bool, device=device))

    # -- shape ----------------------------------------------------------------------------------------------

    @property
    def neuron_count(self) -> int:
        """Number of neurons (output channels / features)."""
        return int(getattr(self, self.out_attr))

    @property
    def incoming_count(self) -> int:
        """Number of incoming neurons (input channels / features); 0 for batch norm."""
        return int(getattr(self, self.in_attr)) if self.in_attr else 0

    def _set_widths(self, out_width: int, in_width: int | None, groups: int | None = None) -> None:
        setattr(self, self.out_attr, out_width)
        if self.in_attr and in_width is not None:
            setattr(self, self.in_attr, in_width)

    def _column_view(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-input-channel ``values`` shaped to broadcast against the weight ``like`` (dim 1: columns)."""
        return values.view([1, -1] + [1] * (like.dim() - 2))

    def _row_view(self, values: torch.Tensor, param_name: str, like: torch.Tensor) -> torch.Tensor:
        """Per-neuron ``values`` shaped to broadcast against the parameter ``like`` (dim 0: rows)."""
        return values.view([-1] + [1] * (like.dim() - 1))

    def _has_columns(self, param_name: str, like: torch.Tensor) -> bool:
        """Whether ``param_name``'s dim 1 is indexed by incoming neurons."""
        return param_name == "weight" and self.in_attr is not None and like.dim() > 1

    def step_roles(self) -> tuple[str, ...]:
        """The parameters whose updates per-neuron learning rates and young-row corrections adjust."""
        return ("weight", "bias")

    def slots(self) -> list[Slot]:
        """The layer's tensors that follow its neurons (see :class:`Slot`)."""
        raise NotImplementedError

    def init_bound(self) -> float:
        """Half-width of the uniform initializer of a fresh row (PyTorch's default init)."""
        raise NotImplementedError

    # -- tracking -------------------------------------------------------------------------------------------

    @property
    def tracking_mode(self) -> TrackingMode:
        """Which counters this layer's forward passes update (the owning network sets it for all its layers).

        Example:
            >>> conv = Conv2dWithNeuronOps(1, 2, kernel_size=3)
            >>> conv.tracking_mode = TrackingMode.TRAIN  # a layer used on its own
        """
        return self._layer_state.mode

    @tracking_mode.setter
    def tracking_mode(self, mode: TrackingMode) -> None:
        if not isinstance(mode, TrackingMode):
            raise ConfigurationError(f"tracking_mode must be a TrackingMode, got {mode!r}.")
        self._flush_triggers()  # kept sums count in the mode they were taken in
        self._layer_state.mode = mode

    @property
    def pending_forwards(self) -> int | None:
        """Forwards whose trigger counting is still to run inside a batched block, None outside one.

        See :meth:`NetworkWithOps.batched_trigger_counts`.
        """
        pending = self._layer_state.pending
        return None if pending is None else len(pending)

    def _batch_triggers(self, on: bool) -> None:
        """Start (keep sums) or stop (count them, keep none) batched trigger counting."""
        self._flush_triggers()
        self._layer_state.pending = PendingSums() if on else None

    def _record_triggers(self, output: torch.Tensor) -> None:
        sums = spatial_sums(output, self.channel_dim)
        pending = self._layer_state.pending
        if pending is None:
            self._count_triggers(sums)
            return
        if not pending.add(sums, output):
            self._flush_triggers()
            pending.add(sums, output)
        if pending.full:
            self._flush_triggers()

    def _count_triggers(self, sums: torch.Tensor) -> None:
        module: Any = self
        fired = count_positive(sums)
        if self._layer_state.mode is TrackingMode.TRAIN:
            module.train_trigger_count.add_(fired)
            module.train_seen_count.add_(sums.shape[0])
        else:
            module.eval_trigger_count.add_(fired)
            module.eval_seen_count.add_(sums.shape[0])

    def _flush_triggers(self) -> None:
        """Count the spatial sums kept by batched counting (in the current tracking mode)."""
        pending = self._layer_state.pending
        sums = pending.take() if pending is not None else None
        if sums is not None:
            self._count_triggers(sums)

    def trigger_rates(self, split: str = "train") -> torch.Tensor:
        """Per-neuron trigger rate (triggers / samples seen) for ``split`` ('train' or 'eval').

        Neurons that saw no sample have rate 0.
        """
        if split not in ("train", "eval"):
            raise ConfigurationError(f"split must be 'train' or 'eval', got {split!r}.")
        module: Any = self
        triggers = getattr(module, f"{split}_trigger_count").double()
        seen = getattr(module, f"{split}_seen_count").double()
        return torch.where(seen > 0, triggers / seen.clamp_min(1), torch.zeros_like(seen))

    # -- per-neuron learning rate ---------------------------------------------------------------------------

    def set_per_neuron_learning_rate(self, neuron_indices: Iterable[int], lr: float) -> None:
        """Multiply the optimizer's update of these neurons (weight rows and bias) by ``lr``.

        ``lr=1.0`` is normal training, ``0.0`` keeps them fixed. Exact for any optimizer
        attached with ``model.attach_optimizer`` (Adam included).

        Example:
            ``model.layers[0].set_per_neuron_learning_rate({0, 1}, lr=0.0)``
        """
        owner = self._layer_state.owning_surgery()
        if owner is not None:
            owner.set_layer_learning_rate(self, neuron_indices, lr, incoming=False)
            return
        indices = check_neuron_indices(neuron_indices, self.neuron_count)
        self._set_multiplier("lr_row_multiplier", indices, check_multiplier(lr))

    def set_per_incoming_neuron_learning_rate(self, neuron_indices: Iterable[int], lr: float) -> None:
        """Multiply the optimizer's update of the weight columns of these incoming neurons by ``lr``.

        Example:
            ``model.layers[1].set_per_incoming_neuron_learning_rate({0}, lr=0.5)``
        """
        owner = self._layer_state.owning_surgery()
        if owner is not None:
            owner.set_layer_learning_rate(self, neuron_indices, lr, incoming=True)
            return
        self._check_has_columns()
        indices = check_neuron_indices(neuron_indices, self.incoming_count)
        self._set_multiplier("lr_col_multiplier", indices, check_multiplier(lr))

    def _check_has_columns(self) -> None:
        if self.in_attr is None:
            raise ConfigurationError(
                f"{type(self).__name__} has no incoming weights (it scales each channel on its own); "
                "use set_per_neuron_learning_rate instead."
            )

    def _set_multiplier(self, buffer_name: str, indices: list[int], lr: float) -> None:
        buffer: torch.Tensor = getattr(self, buffer_name)
        buffer[torch.tensor(indices, dtype=torch.long, device=buffer.device)] = lr
        self._refresh_caches()

    def step_multiplier(self, param_name: str, like: torch.Tensor) -> torch.Tensor | None:
        """The user's per-element multiplier of ``param_name``'s update, or None when all ones."""
        state = self._layer_state
        if not state.lr_active:
            return None
        cached = state.mult_cache.get(param_name)
        if cached is None or cached.shape != like.shape or cached.dtype != like.dtype or cached.device != like.device:
            module: Any = self
            m = self._row_view(module.lr_row_multiplier, param_name, like)
            if self._has_columns(param_name, like):
                m = m * self._column_view(module.lr_col_multiplier, like)
            cached = m.expand(like.shape).to(device=like.device, dtype=like.dtype).contiguous()
            state.mult_cache[param_name] = cached
        return cached

    # -- freezing -------------------------------------------------------------------------------------------

    def _set_frozen(self, flag: bool) -> None:
        module: Any = self
        module.frozen.fill_(flag)
        self._apply_frozen(flag)

    def _apply_frozen(self, flag: bool) -> None:
        module: Any = self
        for param in module.parameters(recurse=False):
            param.requires_grad_(not flag)
            if flag:
                param.grad = None

    @property
    def is_frozen(self) -> bool:
        """Whether the layer is frozen (its parameters do not train)."""
        module: Any = self
        return bool(module.frozen)

    # -- caches ---------------------------------------------------------------------------------------------

    def _refresh_caches(self) -> None:
        """Recompute the host-side summaries of the buffers (after an edit or a load)."""
        module: Any = self
        state = self._layer_state
        state.mult_cache = {}
        state.lr_active = bool((module.lr_row_multiplier != 1).any() or (module.lr_col_multiplier != 1).any())
        births = [b.max() for b in (module.row_birth_step, module.col_birth_step) if b.numel()]
        state.max_birth = int(torch.stack(births).max()) if births else 0
        owner = state.owning_surgery()
        if owner is not None:
            owner.invalidate_step_targets()


def _before_load(module: nn.Module, *args: Any) -> None:
    layer: Any = module
    layer._flush_triggers()  # sums kept by batched counting count before the counters are replaced


def _after_load(module: nn.Module, incompatible: Any) -> None:
    layer: Any = module
    layer._apply_frozen(bool(layer.frozen))
    layer._refresh_caches()


def _uniform_bound(fan_in: int) -> float:
    # kaiming_uniform_(a=sqrt(5)) and the default bias init both reduce to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    return 1.0 / fan_in**0.5 if fan_in > 0 else 0.0


_COUNTER_SLOTS = [Slot(name, row_dim=0) for name in COUNTER_NAMES]
# Per-row and per-column settings of layers with weight columns (Conv2d, Linear).
_ROW_COL_SLOTS = [
    Slot("lr_row_multiplier", 0, None, 1.0),
    Slot("lr_col_multiplier", None, 0, col_fill=1.0),
    Slot("row_birth_step", 0, None, "step"),
    Slot("col_birth_step", None, 0, col_fill="step"),
]


def counter_slots() -> list[Slot]:
    """The slots of the per-neuron trigger counters (every ops layer has them)."""
    return list(_COUNTER_SLOTS)


def row_col_slots() -> list[Slot]:
    """The slots of the per-row and per-column settings of a layer with weight columns."""
    return list(_ROW_COL_SLOTS)


class Conv2dWithNeuronOps(NeuronLayer, nn.Conv2d):
    """``nn.Conv2d`` whose output channels are editable neurons.

    ``forward(x, skip_register=False)``: with ``skip_register=True`` the call updates no counters.
    """

    channel_dim = 1
    out_attr = "out_channels"
    in_attr = "in_channels"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_neuron_state()

    def slots(self) -> list[Slot]:
        # A grouped convolution's weight columns are per group: surgery remaps them group by group.
        slots = [Slot("weight", 0, 1, "init", 0.0)]
        if self.bias is not None:
            slots.append(Slot("bias", 0, None, "init"))
        return slots + _COUNTER_SLOTS + _ROW_COL_SLOTS

    def _set_widths(self, out_width: int, in_width: int | None, groups: int | None = None) -> None:
        NeuronLayer._set_widths(self, out_width, in_width)
        if groups is not None:
            self.groups = groups

    def _column_view(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-input-channel ``values`` against the weight ``like``: a grouped weight's row of group i
        reads input channels ``i*a .. i*a+a-1`` as its columns ``0..a-1``."""
        if self.groups == 1:
            return NeuronLayer._column_view(self, values, like)
        rows, width = like.shape[0], like.shape[1]
        per_row = values.view(self.groups, 1, width).expand(self.groups, rows // self.groups, width)
        return per_row.reshape(rows, width, *([1] * (like.dim() - 2)))

    def init_bound(self) -> float:
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return _uniform_bound(fan_in)

    def forward(self, input: torch.Tensor, skip_register: bool = False) -> torch.Tensor:
        state = self._layer_state
        if state.trace is not None:
            return state.trace.layer_forward(self, input)
        output = self._conv_forward(input, self.weight, self.bias)
        if state.mode is not TrackingMode.DISABLED and not skip_register:
            self._record_triggers(output)
        return output


class LinearWithNeuronOps(NeuronLayer, nn.Linear):
    """``nn.Linear`` whose output features are editable neurons.

    ``forward(x, skip_register=False)``: with ``skip_register=True`` the call updates no counters.
    """

    channel_dim = -1
    out_attr = "out_features"
    in_attr = "in_features"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_neuron_state()

    def slots(self) -> list[Slot]:
        slots = [Slot("weight", 0, 1, "init", 0.0)]
        if self.bias is not None:
            slots.append(Slot("bias", 0, None, "init"))
        return slots + _COUNTER_SLOTS + _ROW_COL_SLOTS

    def init_bound(self) -> float:
        return _uniform_bound(self.in_features)

    def forward(self, input: torch.Tensor, skip_register: bool = False) -> torch.Tensor:
        state = self._layer_state
        if state.trace is not None:
            return state.trace.layer_forward(self, input)
        output = nn.functional.linear(input, self.weight, self.bias)
        if state.mode is not TrackingMode.DISABLED and not skip_register:
            self._record_triggers(output)
        return output


class BatchNorm2dWithNeuronOps(NeuronLayer, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose channels follow the layer that produces them.

    Its counters track the normalised output (the pre-activation of a conv → BN → ReLU block).
    """

    channel_dim = 1
    out_attr = "num_features"
    in_attr = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.BatchNorm2d.__init__(self, *args, **kwargs)
        self._init_neuron_state()

    def slots(self) -> list[Slot]:
        slots = []
        if self.weight is not None:
            slots += [Slot("weight", 0, None, 1.0), Slot("bias", 0, None, 0.0)]
        if self.running_mean is not None:
            slots += [Slot("running_mean", 0, None, 0.0), Slot("running_var", 0, None, 1.0)]
        return slots + _COUNTER_SLOTS + [
            Slot("lr_row_multiplier", 0, None, 1.0),
            Slot("row_birth_step", 0, None, "step"),
        ]

    def init_bound(self) -> float:
        return 0.0

    def forward(self, input: torch.Tensor, skip_register: bool = False) -> torch.Tensor:
        state = self._layer_state
        if state.trace is not None:
            return state.trace.layer_forward(self, input)
        output = nn.BatchNorm2d.forward(self, input)
        if state.mode is not TrackingMode.DISABLED and not skip_register:
            self._record_triggers(output)
        return output
