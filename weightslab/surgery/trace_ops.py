"""How the tracer follows channel keys through torch's generic ops: pointwise, shapes, pooling, reductions.

Functions of the running :class:`~weightslab.surgery.trace.Tracer` (``trace.py`` dispatches
to them by op, ``trace_rules.py`` lists the ops). Keys are computed on their compact form
(``keys.py``), so an op costs its number of channels, not of activations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from weightslab.surgery.keys import EXTERNAL, compact, compact_many, key_dims, normalize_dim, pad_keys
from weightslab.surgery.trace_followers import follow_in_cat, foreign_operand
from weightslab.surgery.trace_rules import arg, shape_op_fixes_widths

if TYPE_CHECKING:
    from weightslab.surgery.trace import Tracer

__all__ = ["follow_pad", "follow_pointwise", "follow_reduce", "follow_shape", "follow_sizes", "follow_spatial"]


def follow_pointwise(tracer: Tracer, name: str, args: Any, kwargs: Any, out: torch.Tensor) -> None:
    """Pointwise ops keep keys; keyed operands are joined elementwise (a residual addition)."""
    shape = out.shape
    keyed: list[torch.Tensor] = []
    foreign: list[torch.Tensor] = []
    origins = set()
    for operand in tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))[0]:
        if not isinstance(operand, torch.Tensor):
            continue
        entry = tracer.get(operand)
        if entry is None:
            if operand.numel() > 1:
                foreign.append(operand)
            continue
        keyed.append(torch.broadcast_to(entry[0], shape))
        origins.add(entry[1])
    if not keyed:
        raise RuntimeError("no keyed operand")
    if len({frozenset(key_dims(k)) for k in keyed}) > 1:
        tracer.not_generic(f"`{name}` combines tensors laid out along different channel dimensions")
    small = compact_many(keyed)
    result = small[0]
    for keys in small[1:]:
        tracer.join(result, keys)
        mixed = (result >= 0) ^ (keys >= 0)
        if mixed.any():
            tracer.pin(torch.cat([result[mixed], keys[mixed]]), f"`{name}`{tracer.where()} combines them with "
                       "external values")
        result = torch.where(result >= 0, result, keys)
    full = result.expand(shape) if result.shape != shape else result
    for operand in foreign:
        foreign_operand(tracer, name, operand, full)
    tracer.tag(out, full, origins.pop() if len(origins) == 1 else None)


def follow_shape(tracer: Tracer, name: str, func: Any, args: Any, kwargs: Any, out: Any, tagged: list) -> None:
    """Shape ops are applied to the keys themselves (``view`` as ``reshape``: keys may not be contiguous)."""
    template = cat_template(tracer, name, args, kwargs)

    def substitute(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        entry = tracer.get(value)
        if entry is not None:
            return entry[0]
        if value.is_floating_point():
            if template is not None and tracer.parameter_of(value) is not None:
                return follow_in_cat(tracer, name, value, template)
            return torch.full(value.shape, EXTERNAL, dtype=torch.int64)
        return value.cpu()

    first = tracer.keys(tagged[0])
    call = {"view": torch.Tensor.reshape, "view_as": torch.Tensor.reshape_as}.get(name, func)
    with torch.no_grad():
        keyed = call(*tree_map(substitute, args), **tree_map(substitute, kwargs))
    origins = {entry[1] for entry in map(tracer.get, tagged) if entry is not None}
    origin = origins.pop() if len(origins) == 1 else None
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    key_outs = [t for t in tree_flatten(keyed)[0] if isinstance(t, torch.Tensor)]
    if len(outs) != len(key_outs) or any(o.shape != k.shape for o, k in zip(outs, key_outs)):
        raise RuntimeError("keys and values took different shapes")
    if tracer.graph.generic:
        reason = shape_op_fixes_widths(
            name, args, kwargs, first.dim(), key_dims(first), key_dims(key_outs[0]) if key_outs else set()
        )
        if reason:
            tracer.not_generic(reason)
    if name in ("view", "reshape") and key_outs and tracer.stack:
        follow_sizes(tracer, args, kwargs, key_outs[0])
    for o, k in zip(outs, key_outs):
        tracer.tag(o, k, origin)


def follow_sizes(tracer: Tracer, args: Any, kwargs: Any, keys: torch.Tensor) -> None:
    """A ``view``/``reshape`` whose size of a channel dimension is an integer attribute of the running module.

    E.g. torchvision's ViT: ``x.reshape(n, self.hidden_dim, n_h * n_w)``. The attribute follows
    those channels (an edit sets it to their new number), recorded in ``graph.sizes``; an
    attribute equal to no such size, or two attributes equal to it, are left alone.
    """
    sizes = {v for v in tree_flatten((args[1:], kwargs))[0] if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    if not sizes:
        return
    dims = key_dims(keys)
    if len(dims) != 1:  # channels spread over several dims (a shuffle's view(n, groups, c/groups, ...)): no size
        return
    dim = dims.pop()
    width = keys.shape[dim]
    if width not in sizes:
        return
    module_name, module = tracer.stack[-1]
    found = [attr for attr, value in vars(module).items()
             if not attr.startswith("_") and type(value) is int and value == width]
    if len(found) == 1:
        columns = compact(keys).movedim(dim, -1).reshape(-1, width)[0].numpy().copy()
        tracer.graph.sizes[f"{module_name}.{found[0]}" if module_name else found[0]] = columns


def cat_template(tracer: Tracer, name: str, args: Any, kwargs: Any) -> tuple[torch.Tensor, int] | None:
    """For a concatenation along a dim the keys do not vary on: the keys a parameter operand takes."""
    if name not in ("cat", "concat", "concatenate"):
        return None
    tensors = arg(args, kwargs, 0, "tensors")
    if not isinstance(tensors, list | tuple):
        return None
    keyed = [t for t in tensors if tracer.get(t) is not None]
    if not keyed or not any(tracer.parameter_of(t) is not None for t in tensors):
        return None
    keys = tracer.keys(keyed[0])
    dim = normalize_dim(arg(args, kwargs, 1, "dim", 0), keys.dim())
    if dim is None or dim in key_dims(keys):
        return None
    return keys.narrow(dim, 0, 1), dim


def follow_pad(tracer: Tracer, args: Any, kwargs: Any, out: torch.Tensor) -> None:
    """Padded positions belong to the channel they pad; padding a channel dimension pins."""
    source = args[0]
    entry = tracer.get(source)
    if entry is None:
        return
    keys, origin = entry
    pad = list(arg(args, kwargs, 1, "pad"))
    padded = {source.dim() - 1 - i // 2 for i in range(0, len(pad), 2) if pad[i] or pad[i + 1]}
    if padded & key_dims(keys):
        tracer.pin(keys, f"`pad`{tracer.where()} pads a channel dimension")
        return
    tracer.tag(out, pad_keys(keys, pad), origin)


def follow_spatial(tracer: Tracer, name: str, args: Any, outs: list[torch.Tensor]) -> None:
    """Pooling and interpolation keep each channel's key (channels at dim 1)."""
    source = args[0]
    entry = tracer.get(source)
    if entry is None:
        return
    keys, origin = entry
    small = compact(keys)
    flat = small.flatten(2) if small.dim() > 2 else small.unsqueeze(-1)
    if not bool((flat == flat[..., :1]).all()):
        tracer.pin(keys, f"`{name}`{tracer.where()} mixes positions that belong to different neurons")
        return
    per_channel = flat[..., 0]
    for o in outs:
        if o.dim() >= 2 and o.shape[1] == keys.shape[1] and o.is_floating_point():
            view = per_channel.view(*per_channel.shape, *([1] * (o.dim() - 2)))
            tracer.tag(o, view.expand(o.shape), origin)


def follow_reduce(tracer: Tracer, name: str, args: Any, kwargs: Any, outs: list[torch.Tensor]) -> None:
    """A reduction over dims the keys do not vary on keeps them; over channels, it pins."""
    source = args[0]
    entry = tracer.get(source)
    if entry is None:
        return
    keys, origin = entry
    dim = arg(args, kwargs, 2 if name == "norm" else 1, "dim")
    keepdim = bool(arg(args, kwargs, 3 if name == "norm" else 2, "keepdim") or False)
    if dim is None:
        tracer.pin(keys, f"`{name}`{tracer.where()} reduces over all neurons")
        return
    dims = tuple(int(d) % keys.dim() for d in (dim if isinstance(dim, list | tuple) else (dim,)))
    small = compact(keys)
    high = torch.amax(small, dim=dims, keepdim=True)
    low = torch.amin(small, dim=dims, keepdim=True)
    if not torch.equal(high, low):
        tracer.pin(keys, f"`{name}`{tracer.where()} reduces over several neurons")
        return
    result = high if keepdim else high.squeeze(dims)
    if outs[0].dim() == result.dim():
        tracer.tag(outs[0], result.expand(outs[0].shape), origin)
