"""What the tracer knows about torch's ops: which keep, move, reduce or mix channels.

Pure tables and checks, read by ``trace.py``. An op is *width-agnostic* when it
would lay out the channels the same way whatever their number (a flatten, a
permute, a concatenation, anything pointwise); a network whose keyed tensors meet
only such ops has its graph after an edit computed without a trace
(``relayout.py``). A ``view`` that spells out the size of a channel dimension, a
slice or a split along one, or code that reads a channel dimension's size, is not
width-agnostic: such networks are re-traced at the new widths (which runs the
model's own code, so its reshapes decide).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from weightslab.surgery.keys import index_touches, normalize_dim

__all__ = [
    "FACTORIES",
    "MUTATING",
    "NORMS",
    "POINTWISE",
    "REDUCE",
    "SHAPE",
    "SIZE_READS",
    "SPATIAL",
    "arg",
    "op_name",
    "shape_op_fixes_widths",
]

POINTWISE = frozenset(
    ["abs", "neg", "relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardtanh",
     "hardswish", "hardsigmoid", "leaky_relu", "softplus", "softsign", "logsigmoid", "tanhshrink", "threshold",
     "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "exp", "log",
     "log1p", "expm1", "sqrt", "rsqrt", "square", "pow", "clamp", "clamp_min", "clamp_max", "clip", "add", "sub",
     "subtract", "mul", "multiply", "div", "divide", "true_divide", "truediv", "floor_divide", "rsub", "radd", "rmul",
     "rtruediv", "rdiv", "iadd", "isub", "imul", "itruediv", "idiv", "maximum", "minimum", "fmax", "fmin", "where",
     "masked_fill", "lerp", "addcmul", "addcdiv", "sin", "cos", "sign", "floor", "ceil", "round", "trunc",
     "reciprocal", "eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or", "logical_not", "float",
     "double", "half", "bfloat16", "to", "type", "type_as", "cuda", "cpu", "requires_grad", "nan_to_num", "erf"]
)
SHAPE = frozenset(
    ["view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "swapaxes",
     "swapdims", "t", "squeeze", "unsqueeze", "getitem", "narrow", "select", "cat", "concat", "concatenate", "stack",
     "hstack", "vstack", "split", "chunk", "unbind", "expand", "expand_as", "movedim", "moveaxis", "repeat", "tile",
     "flip", "roll", "contiguous", "clone", "detach", "index_select"]
)
SPATIAL = frozenset(
    ["max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
     "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
     "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
     "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "lp_pool1d",
     "lp_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear"]
)
REDUCE = frozenset(["mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "nansum", "nanmean",
                    "prod", "median", "norm"])
NORMS = frozenset(["layer_norm", "group_norm", "batch_norm", "instance_norm"])
# New tensors that only take a shape, dtype or device from their argument: no channel flows through them.
FACTORIES = frozenset({"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like",
                       "empty_like", "full_like", "rand_like", "randn_like", "randint_like"})
MUTATING = frozenset({"setitem", "copy", "fill", "zero", "index_put", "masked_scatter", "scatter"})
SIZE_READS = frozenset({"size", "numel", "shape"})
_ALWAYS_AGNOSTIC = frozenset(
    ["flatten", "permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "squeeze", "unsqueeze",
     "cat", "concat", "concatenate", "stack", "hstack", "vstack", "contiguous", "clone", "detach", "get"]
)
# op → (position, keyword, default) of its dimension argument
_DIM_ARGS = {
    "narrow": (1, "dim", None), "select": (1, "dim", None), "split": (2, "dim", 0), "chunk": (2, "dim", 0),
    "unbind": (1, "dim", 0), "index_select": (1, "dim", None), "unflatten": (1, "dim", None),
}


def op_name(func: Any) -> str:
    """The name of a torch function, method or property getter, without underscores."""
    name = getattr(func, "__name__", None) or type(func).__name__
    return name.strip("_")


def arg(args: Sequence[Any], kwargs: Mapping[str, Any], position: int, key: str, default: Any = None) -> Any:
    """An argument given by position or keyword."""
    if key in kwargs:
        return kwargs[key]
    return args[position] if len(args) > position else default


def _sizes(args: Sequence[Any]) -> list[Any]:
    rest = list(args[1:])
    if len(rest) == 1 and isinstance(rest[0], Sequence | torch.Size):
        return list(rest[0])
    return rest


def shape_op_fixes_widths(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], ndim: int, dims: set[int], out_dims: set[int]
) -> str | None:
    """Why a shape op on a tensor with channel dimensions ``dims`` is not width-agnostic (None: it is).

    Args:
        name: the op's name (see :func:`op_name`).
        args, kwargs: its arguments (the keyed tensor first).
        ndim: the keyed tensor's number of dimensions.
        dims: the dimensions along which its keys vary.
        out_dims: the same for the (first) output.
    """
    if name in _ALWAYS_AGNOSTIC or not dims:
        return None
    if name in ("view", "reshape"):
        sizes = _sizes(args)
        fixed = [d for d in out_dims if d < len(sizes) and sizes[d] != -1]
        return f"`{name}` spells out the size of a channel dimension ({sizes})" if fixed else None
    if name in ("view_as", "reshape_as", "expand_as"):
        other = arg(args, kwargs, 1, "other")
        same = isinstance(other, torch.Tensor) and other.dim() == ndim
        return None if same and name == "expand_as" else f"`{name}` takes its shape from another tensor"
    if name == "expand":
        sizes = _sizes(args)
        offset = len(sizes) - ndim
        fixed = [d for d in dims if 0 <= d + offset < len(sizes) and sizes[d + offset] != -1]
        return f"`expand` spells out the size of a channel dimension ({sizes})" if fixed else None
    if name in ("repeat", "tile"):
        counts = _sizes(args)
        offset = len(counts) - ndim
        repeated = [d for d in dims if 0 <= d + offset < len(counts) and counts[d + offset] != 1]
        return f"`{name}` repeats a channel dimension" if repeated else None
    if name == "getitem":
        touches = index_touches(arg(args, kwargs, 1, "index"), ndim, dims)
        return "`[...]` indexes or slices a channel dimension" if touches is not False else None
    if name in ("flip", "roll"):
        chosen = arg(args, kwargs, 1 if name == "flip" else 2, "dims")
        if chosen is None:
            return f"`{name}` moves elements across a channel dimension"
        chosen = [chosen] if isinstance(chosen, int) else list(chosen)
        touched = {normalize_dim(d, ndim) for d in chosen} & dims
        return f"`{name}` moves elements along a channel dimension" if touched else None
    if name in _DIM_ARGS:
        position, key, default = _DIM_ARGS[name]
        dim = normalize_dim(arg(args, kwargs, position, key, default), ndim)
        return f"`{name}` cuts a channel dimension at fixed positions" if dim is None or dim in dims else None
    return f"`{name}` is not known to be width-agnostic"
