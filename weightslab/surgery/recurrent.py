"""Recurrent ops layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` whose hidden units are editable neurons.

A hidden unit ``h`` of a layer with ``H`` units and ``g`` gates (LSTM 4: input, forget, cell,
output; GRU 3: reset, update, new; RNN 1) is row ``h`` of every gate block of ``weight_ih_l0``,
``weight_hh_l0`` and both biases (rows ``h, H+h, 2H+h, ...``), and column ``h`` of
``weight_hh_l0`` (what every unit reads of it at the next time step); the layers that read
the output (or the final ``h_n``/``c_n``) read it at column ``h``. Pruning removes all of that,
with the optimizer's state; adding draws the new rows like PyTorch's initializer and gives
them zero columns in ``weight_hh_l0`` and in the readers, so the existing units and the
model's output are unchanged. The input columns (``weight_ih_l0``'s dim 1) follow the layer
that feeds it, like a Linear's. A layer started from another's final state (a decoder from its
encoder's ``(h_n, c_n)``) has its units coupled with that one's; one started from a state the
code makes (``torch.zeros(1, n, 6)``) cannot change its number of units: that is refused.

One layer, one direction: :func:`~weightslab.surgery.convert.convert_to_ops` (version 4)
converts an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with ``num_layers=1``, not bidirectional
and without ``proj_size``; others stay as they are (the layer feeding them is still editable).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from weightslab.surgery.modules import NeuronLayer, Slot, counter_slots, row_col_slots
from weightslab.surgery.tracking import TrackingMode

__all__ = ["GRUWithNeuronOps", "LSTMWithNeuronOps", "RNNWithNeuronOps", "convertible_recurrent", "recurrent_ops"]


class _RecurrentOps(NeuronLayer):
    """What the recurrent ops layers share (placed before the torch class in the bases)."""

    channel_dim = -1
    out_attr = "hidden_size"
    in_attr = "input_size"
    gates = 1

    def slots(self) -> list[Slot]:
        g = self.gates
        slots = [Slot("weight_ih_l0", 0, 1, "init", 0.0, blocks=g),
                 Slot("weight_hh_l0", 0, 1, "init", 0.0, blocks=g, own_cols=True)]
        if getattr(self, "bias", False):
            slots += [Slot("bias_ih_l0", 0, None, "init", blocks=g), Slot("bias_hh_l0", 0, None, "init", blocks=g)]
        return slots + counter_slots() + row_col_slots()

    def init_bound(self) -> float:
        return 1.0 / math.sqrt(self.neuron_count) if self.neuron_count else 0.0

    def step_roles(self) -> tuple[str, ...]:
        return ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

    def _row_view(self, values: torch.Tensor, param_name: str, like: torch.Tensor) -> torch.Tensor:
        return values.repeat(self.gates).view([-1] + [1] * (like.dim() - 1))

    def _has_columns(self, param_name: str, like: torch.Tensor) -> bool:
        return param_name == "weight_ih_l0"

    def _set_widths(self, out_width: int, in_width: int | None, groups: int | None = None) -> None:
        NeuronLayer._set_widths(self, out_width, in_width)

    def _recurrent_forward(self, torch_forward: Any, input: Any, hx: Any, skip_register: bool) -> Any:
        state = self._layer_state
        if state.trace is not None:
            if isinstance(input, PackedSequence):
                raise RuntimeError(f"{type(self).__name__} is traced with a tensor input, not a PackedSequence")
            return state.trace.recurrent_forward(self, input, hx, lstm=self.gates == 4)
        result = torch_forward(self, input, hx)
        output = result[0]
        if state.mode is not TrackingMode.DISABLED and not skip_register and isinstance(output, torch.Tensor):
            module: Any = self
            batch_major = module.batch_first or output.dim() < 3
            self._record_triggers(output if batch_major else output.transpose(0, 1))
        return result


class LSTMWithNeuronOps(_RecurrentOps, nn.LSTM):
    """``nn.LSTM`` (one layer, one direction) whose hidden units are editable neurons (4 gates each)."""

    gates = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.LSTM.__init__(self, *args, **kwargs)
        self._init_neuron_state()

    def forward(self, input: Any, hx: Any = None, skip_register: bool = False) -> Any:  # type: ignore[override]
        return self._recurrent_forward(nn.LSTM.forward, input, hx, skip_register)


class GRUWithNeuronOps(_RecurrentOps, nn.GRU):
    """``nn.GRU`` (one layer, one direction) whose hidden units are editable neurons (3 gates each)."""

    gates = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.GRU.__init__(self, *args, **kwargs)
        self._init_neuron_state()

    def forward(self, input: Any, hx: Any = None, skip_register: bool = False) -> Any:  # type: ignore[override]
        return self._recurrent_forward(nn.GRU.forward, input, hx, skip_register)


class RNNWithNeuronOps(_RecurrentOps, nn.RNN):
    """``nn.RNN`` (one layer, one direction) whose hidden units are editable neurons."""

    gates = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.RNN.__init__(self, *args, **kwargs)
        self._init_neuron_state()

    def forward(self, input: Any, hx: Any = None, skip_register: bool = False) -> Any:  # type: ignore[override]
        return self._recurrent_forward(nn.RNN.forward, input, hx, skip_register)


_OPS: dict[type[nn.Module], Any] = {
    nn.LSTM: LSTMWithNeuronOps, nn.GRU: GRUWithNeuronOps, nn.RNN: RNNWithNeuronOps,
}


def convertible_recurrent(module: nn.Module) -> bool:
    """An ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` of exactly that type with one layer, one direction, no projection."""
    m: Any = module
    return (type(module) in _OPS and m.num_layers == 1 and not m.bidirectional and not getattr(m, "proj_size", 0)
            and not module._forward_pre_hooks and not module._forward_hooks)


def recurrent_ops(module: nn.Module) -> nn.Module:
    """The ops layer computing what ``module`` (see :func:`convertible_recurrent`) computes, with its Parameters."""
    m: Any = module
    kwargs: dict[str, Any] = dict(bias=m.bias, batch_first=m.batch_first, dropout=m.dropout, device="meta")
    if isinstance(module, nn.RNN):
        kwargs["nonlinearity"] = m.nonlinearity
    new: Any = _OPS[type(module)](m.input_size, m.hidden_size, **kwargs)
    for name, param in module._parameters.items():
        new._parameters[name] = param
    new._init_flat_weights()  # the list the torch op reads: the kept Parameters, not the meta ones
    new._reset_neuron_state()
    new.train(module.training)
    return new
