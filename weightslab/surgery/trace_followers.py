"""Followers: tensors outside the ops layers that the tracer finds laid out along channels.

A parameter or buffer added to, multiplied with or concatenated to keyed activations
(a position embedding, a class token, a layer scale), and the affine entries and
running statistics of ``layer_norm`` / ``group_norm`` / ``batch_norm``, are recorded as
:class:`~weightslab.surgery.graph.Follower` s: an edit resizes them with the channels
(new entries: 0 for what is added, 1 for what scales). Recurrent layers are followed here
too: the input weights of a plain ``nn.LSTM``/``nn.GRU``/``nn.RNN`` follow the channels it
reads, and a recurrent ops layer's call gives its output and final states its units' keys.
Functions of the running :class:`~weightslab.surgery.trace.Tracer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from weightslab.surgery.graph import Follower
from weightslab.surgery.keys import EXTERNAL, key_dims
from weightslab.surgery.trace_rules import arg

if TYPE_CHECKING:
    from weightslab.surgery.trace import Tracer

__all__ = ["follow_in_cat", "follow_norm", "follow_recurrent", "foreign_operand", "record_follower", "recurrent_layer"]

_MULTIPLYING = frozenset({"mul", "multiply", "imul", "rmul", "div", "divide", "true_divide", "truediv", "itruediv",
                          "idiv", "rdiv", "rtruediv"})
_NORM_MODULES = {"layer_norm": nn.LayerNorm, "group_norm": nn.GroupNorm, "batch_norm": nn.modules.batchnorm._NormBase,
                 "instance_norm": nn.modules.batchnorm._NormBase}


def foreign_operand(tracer: Tracer, name: str, operand: torch.Tensor, keys: torch.Tensor) -> None:
    """An operand of a pointwise op that no ops layer produced, combined with activations keyed ``keys``.

    Harmless if it only broadcasts along the dims where the keys vary; a parameter (or buffer)
    laid out along them follows the channels; anything else pins them.
    """
    offset = keys.dim() - operand.dim()
    aligned = [d for d in key_dims(keys) if d >= offset and operand.shape[d - offset] > 1]
    if not aligned:
        return
    found = tracer.parameter_of(operand)
    if found is None:
        tracer.pin(keys, f"`{name}`{tracer.where()} combines them with a tensor that neither an ops layer nor a "
                   "parameter holds")
        return
    if len(aligned) > 1:
        tracer.pin(keys, f"`{name}`{tracer.where()} combines them with {found[0]}, laid out along several channel "
                   "dimensions")
        return
    dim = aligned[0]
    columns = tracer.columns_of(keys, dim, f"`{name}`")
    record_follower(tracer, found[0], dim - offset - found[2], columns, 1.0 if name in _MULTIPLYING else 0.0)


def record_follower(tracer: Tracer, name: str, dim: int, columns: np.ndarray, fill: float) -> None:
    """Record the tensor ``name`` as laid out along ``columns`` at its dimension ``dim``."""
    previous = tracer.graph.followers.get(name)
    if previous is not None:
        if previous.dim != dim or len(previous.keys) != len(columns):
            tracer.pin(columns, f"{name} is laid out along these channels in two different ways")
            tracer.pin(previous.keys, f"{name} is laid out along these channels in two different ways")
            return
        tracer.join(torch.as_tensor(previous.keys), torch.as_tensor(columns))
        return
    tracer.graph.followers[name] = Follower(dim, columns, fill)


def follow_in_cat(tracer: Tracer, name: str, value: torch.Tensor, template: tuple[torch.Tensor, int]) -> torch.Tensor:
    """The keys of a parameter concatenated to activations along a dim their keys do not vary on (a class token)."""
    keys, dim = template
    shape = list(keys.shape)
    shape[dim] = value.shape[dim]
    keys = keys.expand(shape)
    found = tracer.parameter_of(value)
    assert found is not None
    offset = found[2]
    for d in key_dims(keys):
        own = d - offset
        if own < 0 or found[1].shape[own] != value.shape[d]:
            return torch.full(value.shape, EXTERNAL, dtype=torch.int64)
        record_follower(tracer, found[0], own, tracer.columns_of(keys, d, f"`{name}`"), 0.0)
    return keys


def follow_norm(tracer: Tracer, name: str, func: Any, args: Any, kwargs: Any) -> torch.Tensor:
    """A normalisation op on keyed activations: keys pass, its per-channel tensors follow them.

    A torch normalisation module's op is not run (its shapes may be stale in a trace at new
    widths; the values do not matter); the same op called with fixed shapes by other code is.
    """
    x = args[0]
    keys, origin = tracer.get(x)  # type: ignore[misc]
    module_name, module = tracer.stack[-1] if tracer.stack else ("", None)
    label = module_name or f"`{name}`"
    if name == "layer_norm":
        shape = tuple(arg(args, kwargs, 1, "normalized_shape"))
        roles = [(arg(args, kwargs, 2, "weight"), 1.0), (arg(args, kwargs, 3, "bias"), 0.0)]
        if len(shape) != 1:
            tracer.pin(keys, f"`layer_norm`{tracer.where()} normalises several dimensions together ({shape})")
            return _run_pinned(tracer, func, args, kwargs, keys)
        dim = x.dim() - 1
    elif name == "group_norm":
        roles = [(arg(args, kwargs, 2, "weight"), 1.0), (arg(args, kwargs, 3, "bias"), 0.0)]
        dim = 1
    else:
        roles = [(arg(args, kwargs, 1, "running_mean"), 0.0), (arg(args, kwargs, 2, "running_var"), 1.0),
                 (arg(args, kwargs, 3, "weight"), 1.0), (arg(args, kwargs, 4, "bias"), 0.0)]
        dim = 1
    columns = tracer.columns_of(keys, dim, f"`{name}`")
    for tensor, fill in roles:
        if tensor is None:
            continue
        found = tracer.parameter_of(tensor)
        if found is None:
            tracer.pin(columns, f"`{name}`{tracer.where()} uses per-channel values that no parameter holds")
            return _run_pinned(tracer, func, args, kwargs, keys)
        record_follower(tracer, found[0], 0, columns, fill)
    adaptable = module is not None and isinstance(module, _NORM_MODULES[name])
    if name in ("layer_norm", "group_norm"):
        tracer.graph.normalised[label] = columns
    if name == "group_norm":
        tracer.graph.norm_groups[label] = (int(arg(args, kwargs, 1, "num_groups")), columns)
    if adaptable:
        tracer.graph.adapters[module_name] = (name, columns)
        out = torch.zeros_like(x)  # the values do not matter to a trace, and the module's shapes may be stale
    else:
        tracer.not_generic(f"`{name}` is called with a fixed shape outside its torch module")
        out = func(*args, **kwargs)
    tracer.tag(out, keys, origin)
    return out


def _run_pinned(tracer: Tracer, func: Any, args: Any, kwargs: Any, keys: torch.Tensor) -> torch.Tensor:
    out = func(*args, **kwargs)
    tracer.tag(out, keys, None)
    return out


def follow_recurrent(tracer: Tracer, name: str, func: Any, args: Any, kwargs: Any) -> Any:
    """A recurrent op (``lstm``, ``gru``, ``rnn_*``) reading keyed activations: its input weights follow them.

    The columns of the first layer's input weights (``weight_ih_l0`` and, bidirectional,
    ``weight_ih_l0_reverse``) are laid out along the input's channels (new columns: 0, so an
    added input changes nothing), and the module's ``input_size`` is their number. The hidden
    units it outputs are not an ops layer's: what reads them sees external values.
    """
    x = args[0]
    keys = tracer.keys(x)
    module_name, module = tracer.stack[-1] if tracer.stack else ("", None)
    flat = arg(args, kwargs, 2, "params")
    if not isinstance(module, nn.RNNBase) or not isinstance(flat, list | tuple):
        tracer.pin(keys, f"they feed the recurrent op `{name}`{tracer.where()} outside an nn.LSTM / nn.GRU / nn.RNN")
        return _run_pinned(tracer, func, args, kwargs, keys)
    columns = tracer.columns_of(keys, x.dim() - 1, f"`{name}`")
    first_layer = {f"{module_name}.weight_ih_l0", f"{module_name}.weight_ih_l0_reverse"}
    followed = [found[0] for found in map(tracer.parameter_of, flat) if found is not None and found[0] in first_layer]
    if len(followed) != (2 if module.bidirectional else 1):
        tracer.pin(keys, f"`{name}`{tracer.where()} reads them with input weights that are not its parameters")
        return _run_pinned(tracer, func, args, kwargs, keys)
    for tensor_name in followed:
        record_follower(tracer, tensor_name, 1, columns, 0.0)
    tracer.graph.sizes[f"{module_name}.input_size"] = columns
    tracer.not_generic(f"`{name}` reads its input width from input_size")
    return func(*args, **kwargs)


def recurrent_layer(tracer: Tracer, layer: Any, x: torch.Tensor, hx: Any, lstm: bool) -> tuple[torch.Tensor, Any]:
    """A recurrent ops layer's call: its inputs are read like a Linear's; its output and final states
    (``h_n``, and ``c_n`` of an LSTM) carry its hidden units' keys along their last dim.

    Initial states given to it (``hx``) hold one value per hidden unit: produced by an ops layer (an
    encoder's final state), their channels are joined with its units; from anywhere else (a tensor of
    a fixed size), its units are pinned.
    """
    name = tracer.names[layer]
    entry = tracer.get(x)
    tracer._columns(name, entry[0] if entry is not None else None, x, -1, is_bn=False)
    out_keys = torch.as_tensor(tracer.bases[name], dtype=torch.int64)
    given = [t for t in (hx if isinstance(hx, tuple | list) else (hx,)) if isinstance(t, torch.Tensor)]
    for initial in given:
        found = tracer.get(initial)
        if found is None or initial.shape[-1] != len(out_keys):
            tracer.pin(out_keys, f"the initial state given to {name} does not come from an ops layer, so the code "
                                 "fixes its number of hidden units")
        else:
            tracer.join(torch.as_tensor(tracer.columns_of(found[0], initial.dim() - 1, f"layer {name}")), out_keys)
    batch = () if x.dim() == 2 else (x.shape[0] if layer.batch_first else x.shape[1],)
    out = x.new_zeros((*x.shape[:-1], len(out_keys)))
    tracer.graph.executed.add(name)
    tracer.graph.out_keys[name] = out_keys.numpy()
    tracer.tag(out, out_keys.expand(out.shape), name)
    states = []
    for _ in range(2 if lstm else 1):
        state = x.new_zeros((1, *batch, len(out_keys)))
        tracer.tag(state, out_keys.expand(state.shape), name)
        states.append(state)
    return out, (tuple(states) if lstm else states[0])
