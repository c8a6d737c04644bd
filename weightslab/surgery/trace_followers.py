"""Followers: tensors outside the ops layers that the tracer finds laid out along channels.

A parameter or buffer added to, multiplied with or concatenated to keyed activations
(a position embedding, a class token, a layer scale), and the affine entries and
running statistics of ``layer_norm`` / ``group_norm`` / ``batch_norm``, are recorded as
:class:`~weightslab.surgery.graph.Follower` s: an edit resizes them with the channels
(new entries: 0 for what is added, 1 for what scales). Functions of the running
:class:`~weightslab.surgery.trace.Tracer`.
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

__all__ = ["follow_in_cat", "follow_norm", "foreign_operand", "record_follower"]

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
