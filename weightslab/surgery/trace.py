"""Dependency tracing: follow channel keys through one forward pass of the network.

A ``TorchFunctionMode`` intercepts every torch function the forward pass calls
(so ``x.view(x.size(0), -1)``, ``torch.flatten``, ``out += identity``, ``torch.cat``
all count) and computes, next to each activation, an int64 *key tensor* of the
same shape: the key of the producer channel each element comes from. The rules
are few and generic:

- pointwise ops (relu, dropout, add, mul, ...) keep keys; two keyed operands are
  joined elementwise (a residual addition couples its members);
- shape ops (view, flatten, permute, cat, getitem, ...) are applied to the key
  tensor itself, so offsets of a concatenation and H×W column blocks of a
  flatten come out right by construction;
- spatial ops (pooling, padding, interpolation) and reductions over spatial
  dims keep each channel's key;
- anything else pins the keys it touches (editing them is refused, with the
  op's name in the message), as do keys that reach the model's output.

The ops layers, while traced, compute with zero weights shaped to their actual
input (and to a planned width when one is given), so a *planned* trace checks
that the forward pass still works after an edit before anything is mutated.
Tracing never touches parameters, buffers, statistics or the model age.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from weightslab.surgery.graph import Graph, UnionFind
from weightslab.surgery.modules import BatchNorm2dWithNeuronOps, Conv2dWithNeuronOps, NeuronLayer

__all__ = ["trace_network"]

_POINTWISE = frozenset(
    ["abs", "neg", "relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "leaky_relu", "softplus", "softsign", "logsigmoid", "tanhshrink", "threshold", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "square", "pow", "clamp", "clamp_min", "clamp_max", "clip", "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "truediv", "floor_divide", "rsub", "radd", "rmul", "rtruediv", "rdiv", "iadd", "isub", "imul", "itruediv", "idiv", "maximum", "minimum", "fmax", "fmin", "where", "masked_fill", "lerp", "addcmul", "addcdiv", "sin", "cos", "sign", "floor", "ceil", "round", "trunc", "reciprocal", "eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or", "logical_not", "float", "double", "half", "bfloat16", "to", "type", "type_as", "contiguous", "clone", "detach", "cuda", "cpu", "requires_grad", "nan_to_num", "erf"]
)
_SHAPE = frozenset(
    ["view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "swapaxes", "swapdims", "t", "squeeze", "unsqueeze", "getitem", "narrow", "select", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "split", "chunk", "unbind", "expand", "expand_as", "movedim", "moveaxis", "repeat", "tile", "flip"]
)
_SPATIAL = frozenset(
    ["max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pad"]
)
_REDUCE = frozenset(["mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "nansum", "nanmean", "prod", "median", "norm"])
_MUTATING = frozenset({"setitem", "copy", "fill", "zero", "index_put", "masked_scatter", "scatter"})
_EXTERNAL = -1
_OUTPUT_REASON = "its neurons reach the model's output (they are the model's outputs)"


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return name.strip("_")


class _Tracer(TorchFunctionMode):
    def __init__(self, names: Mapping[NeuronLayer, str], bases: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.names = names
        self.bases = bases
        self.tags: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor, str | None]] = {}
        self.suppress = 0
        self.uf = UnionFind()
        self.pins: dict[int, str] = {}
        self.graph = Graph()

    # -- tags -----------------------------------------------------------------------------------------------

    def tag(self, tensor: torch.Tensor, keys: torch.Tensor, origin: str | None) -> None:
        ident = id(tensor)
        tags = self.tags

        def _drop(_: Any, ident: int = ident) -> None:
            tags.pop(ident, None)

        tags[ident] = (weakref.ref(tensor, _drop), keys, origin)

    def get(self, value: Any) -> tuple[torch.Tensor, str | None] | None:
        if not isinstance(value, torch.Tensor):
            return None
        entry = self.tags.get(id(value))
        if entry is None or entry[0]() is not value:
            return None
        return entry[1], entry[2]

    def keys(self, value: Any) -> torch.Tensor:
        entry = self.get(value)
        if entry is None:
            raise RuntimeError("not a keyed tensor")
        return entry[0]

    def pin(self, keys: torch.Tensor | np.ndarray, reason: str, overwrite: bool = False) -> None:
        for k in np.unique(np.asarray(keys)).tolist():
            if k >= 0 and (overwrite or k not in self.pins):
                self.pins[k] = reason

    def join(self, a: torch.Tensor, b: torch.Tensor) -> None:
        both = (a >= 0) & (b >= 0) & (a != b)
        if both.any():
            pairs = torch.stack([a[both], b[both]], 1).unique(dim=0).tolist()
            for x, y in pairs:
                self.uf.union(x, y)

    # -- the interception -----------------------------------------------------------------------------------

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suppress:
            return out
        leaves, _ = tree_flatten((args, kwargs))
        tagged = [t for t in leaves if self.get(t) is not None]
        if not tagged:
            return out
        name = _op_name(func)
        try:
            self._propagate(name, func, args, kwargs, out, tagged)
        except Exception as error:  # noqa: BLE001 - an op we cannot follow pins, it never breaks the trace
            for t in tagged:
                self.pin(self.keys(t), f"they pass through `{name}`, which the tracer could not follow ({error})")
        return out

    def _propagate(self, name: str, func: Any, args: Any, kwargs: Any, out: Any, tagged: list) -> None:
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name in ("size", "dim", "numel", "stride", "is_contiguous", "is_floating_point", "shape"):
            return
        if not outs:
            if name in _MUTATING:
                for t in tagged:
                    self.pin(self.keys(t), f"they are modified in place by `{name}`")
            return
        if name in _POINTWISE or (name in ("max", "min") and isinstance(_arg(args, kwargs, 1, "other"), torch.Tensor)):
            self._pointwise(name, args, kwargs, outs[0], tagged)
        elif name in _SHAPE or name == "get":  # "get": tensor properties such as .data or .T
            self._shape(func, args, kwargs, out, tagged)
        elif name in _SPATIAL:
            self._spatial(name, args, kwargs, outs)
        elif name in _REDUCE:
            self._reduce(name, args, kwargs, outs)
        else:
            for t in tagged:
                self.pin(self.keys(t), f"they pass through `{name}`, which mixes or reorders neurons")
            if len(outs) == 1 and outs[0].shape == tagged[0].shape:
                # Keep following (pinned) keys, so that reaching the output is still reported as such.
                self.tag(outs[0], self.keys(tagged[0]), None)

    def _pointwise(self, name: str, args: Any, kwargs: Any, out: torch.Tensor, tagged: list) -> None:
        shape = out.shape
        result: torch.Tensor | None = None
        origins = set()
        for operand in tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))[0]:
            if not isinstance(operand, torch.Tensor):
                continue
            entry = self.get(operand)
            if entry is None:
                if operand.numel() > 1:
                    self._foreign_operand(name, operand, shape, tagged)
                continue
            keys = torch.broadcast_to(entry[0], shape)
            origins.add(entry[1])
            if result is None:
                result = keys.clone()
                continue
            self.join(result, keys)
            mixed = (result >= 0) ^ (keys >= 0)
            if mixed.any():
                self.pin(torch.cat([result[mixed], keys[mixed]]), f"`{name}` combines them with external values")
            result = torch.where(result >= 0, result, keys)
        if result is None:
            raise RuntimeError("no keyed operand")
        self.tag(out, result, origins.pop() if len(origins) == 1 else None)

    def _foreign_operand(self, name: str, operand: torch.Tensor, shape: torch.Size, tagged: list) -> None:
        # A tensor no ops layer produced: harmless if it only broadcasts along the dims where keys vary.
        offset = len(shape) - operand.dim()
        for t in tagged:
            keys = torch.broadcast_to(self.keys(t), shape)
            for d in range(operand.dim()):
                dim = d + offset
                if operand.shape[d] > 1 and keys.shape[dim] > 1:
                    first = keys.narrow(dim, 0, 1)
                    if not bool((keys == first).all()):
                        self.pin(keys, f"`{name}` combines them with a tensor no ops layer produced")
                        return

    def _shape(self, func: Any, args: Any, kwargs: Any, out: Any, tagged: list) -> None:
        def substitute(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            entry = self.get(value)
            if entry is not None:
                return entry[0]
            if value.is_floating_point():
                return torch.full(value.shape, _EXTERNAL, dtype=torch.int64)
            return value.cpu()

        with torch.no_grad():
            keyed = func(*tree_map(substitute, args), **tree_map(substitute, kwargs))
        origins = {entry[1] for entry in map(self.get, tagged) if entry is not None}
        origin = origins.pop() if len(origins) == 1 else None
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        key_outs = [t for t in tree_flatten(keyed)[0] if isinstance(t, torch.Tensor)]
        if len(outs) != len(key_outs) or any(o.shape != k.shape for o, k in zip(outs, key_outs)):
            raise RuntimeError("keys and values took different shapes")
        for o, k in zip(outs, key_outs):
            self.tag(o, k, origin)

    def _spatial(self, name: str, args: Any, kwargs: Any, outs: list[torch.Tensor]) -> None:
        source = args[0]
        entry = self.get(source)
        if entry is None:
            return
        keys, origin = entry
        if name == "pad":
            pad = _arg(args, kwargs, 1, "pad")
            if len(pad) > 2 * (source.dim() - 2):
                self.pin(keys, "`pad` pads the channel dimension")
                return
        per_channel = self._per_channel(keys, name)
        if per_channel is None:
            return
        for o in outs:
            if o.shape[:2] == keys.shape[:2] and o.is_floating_point():
                view = per_channel.view(*per_channel.shape, *([1] * (o.dim() - 2)))
                self.tag(o, view.expand(o.shape).clone(), origin)

    def _per_channel(self, keys: torch.Tensor, name: str) -> torch.Tensor | None:
        flat = keys.flatten(2) if keys.dim() > 2 else keys.unsqueeze(-1)
        if not bool((flat == flat[..., :1]).all()):
            self.pin(keys, f"`{name}` mixes positions that belong to different neurons")
            return None
        return flat[..., 0]

    def _reduce(self, name: str, args: Any, kwargs: Any, outs: list[torch.Tensor]) -> None:
        source = args[0]
        entry = self.get(source)
        if entry is None:
            return
        keys, origin = entry
        dim = _arg(args, kwargs, 2 if name == "norm" else 1, "dim")
        keepdim = bool(_arg(args, kwargs, 3 if name == "norm" else 2, "keepdim") or False)
        if dim is None:
            self.pin(keys, f"`{name}` reduces over all neurons")
            return
        dims = tuple(dim) if isinstance(dim, list | tuple) else (int(dim),)
        high = torch.amax(keys, dim=dims, keepdim=keepdim)
        low = torch.amin(keys, dim=dims, keepdim=keepdim)
        if not torch.equal(high, low):
            self.pin(keys, f"`{name}` reduces over several neurons")
            return
        if outs[0].shape == high.shape:
            self.tag(outs[0], high, origin)

    # -- the ops layers -------------------------------------------------------------------------------------

    def layer_forward(self, layer: NeuronLayer, x: torch.Tensor) -> torch.Tensor:
        name = self.names[layer]
        self.suppress += 1
        try:
            entry = self.get(x)
            keys_in = entry[0] if entry is not None else None
            if isinstance(layer, BatchNorm2dWithNeuronOps):
                columns = self._columns(name, keys_in, x, 1, is_bn=True)
                out = x.clone()
                origin = entry[1] if entry is not None else None
                if origin is not None and not np.array_equal(columns, self.bases.get(origin, columns[:0])):
                    origin = None
                self.graph.bn_origin[name] = origin
                self.graph.executed.add(name)
                if keys_in is not None:
                    self.tag(out, keys_in, origin)
                return out
            out_keys = torch.as_tensor(self.bases[name], dtype=torch.int64)
            self._columns(name, keys_in, x, layer.channel_dim, is_bn=False)
            module: Any = layer
            if isinstance(layer, Conv2dWithNeuronOps):
                # Only the output shape matters: compute it on the meta device, for free.
                meta_x = torch.empty(x.shape, device="meta", dtype=x.dtype)
                weight = torch.empty((len(out_keys), x.shape[1] // module.groups, *module.kernel_size), device="meta", dtype=x.dtype)
                out = x.new_zeros(module._conv_forward(meta_x, weight, None).shape)
                if module.groups != 1:
                    self.pin(out_keys, "the layer is a grouped convolution")
                    if keys_in is not None:
                        self.pin(keys_in, "they feed a grouped convolution")
                shape = [1, -1] + [1] * (out.dim() - 2)
            else:
                out = x.new_zeros((*x.shape[:-1], len(out_keys)))
                shape = [1] * (out.dim() - 1) + [-1]
            self.graph.executed.add(name)
            self.graph.out_keys[name] = out_keys.numpy()
            self.tag(out, out_keys.view(shape).expand(out.shape).clone(), name)
            return out
        finally:
            self.suppress -= 1

    def _columns(self, name: str, keys: torch.Tensor | None, x: torch.Tensor, dim: int, is_bn: bool) -> np.ndarray:
        width = x.shape[dim]
        if keys is None:
            columns = np.full(width, _EXTERNAL, dtype=np.int64)
        else:
            moved = keys.movedim(dim, -1).reshape(-1, width)
            if not bool((moved == moved[:1]).all()):
                self.pin(keys, f"layer {name} reads positions that belong to different neurons as one input")
            columns = moved[0].numpy().copy()
        table = self.graph.bn_keys if is_bn else self.graph.in_keys
        previous = table.get(name)
        if previous is not None and not np.array_equal(previous, columns):
            reason = f"layer {name} runs more than once with differently arranged inputs"
            self.pin(previous, reason)
            self.pin(columns, reason)
        table[name] = columns
        return columns


def _arg(args: Any, kwargs: Mapping[str, Any], position: int, key: str) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[position] if len(args) > position else None


def trace_network(
    network: torch.nn.Module,
    example: tuple[Any, ...],
    layer_names: Mapping[NeuronLayer, str],
    planned_keys: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Trace ``network`` on ``example`` inputs and return its :class:`Graph`.

    Args:
        network: the network (its ops layers are switched to trace mode for the call).
        example: positional inputs of one forward pass (a small dummy batch).
        layer_names: every ops layer of the network → its qualified name.
        planned_keys: for a planned trace, producer name → the keys its output
            channels will have after the edit (survivors keep their keys, new
            channels get fresh ones); other producers keep ``0..width`` numbering.

    Raises:
        Exception: whatever the forward pass raises (e.g. a hard-coded shape that
        an edit would break); the caller turns it into a refusal.
    """
    bases: dict[str, np.ndarray] = {}
    next_key = 0
    for layer, name in layer_names.items():
        if isinstance(layer, BatchNorm2dWithNeuronOps):
            continue
        bases[name] = np.arange(next_key, next_key + layer.neuron_count, dtype=np.int64)
        next_key += layer.neuron_count
    key_count = next_key
    if planned_keys:
        bases.update({name: np.asarray(keys, dtype=np.int64) for name, keys in planned_keys.items()})
        key_count = max([key_count] + [int(k.max()) + 1 for k in planned_keys.values() if len(k)])
    tracer = _Tracer(layer_names, bases)
    modes = {m: m.training for m in network.modules()}
    for layer in layer_names:
        layer._layer_state.trace = tracer
    network.eval()
    try:
        with torch.no_grad(), tracer:
            output = network(*example)
            for leaf in tree_flatten(output)[0]:
                entry = tracer.get(leaf)
                if entry is not None:
                    tracer.pin(entry[0], _OUTPUT_REASON, overwrite=True)
    finally:
        for layer in layer_names:
            layer._layer_state.trace = None
        for module, training in modes.items():
            module.training = training
    graph = tracer.graph
    graph.key_count = key_count
    graph.root = tracer.uf.roots(key_count)
    for key, reason in tracer.pins.items():
        root = int(graph.root[key])
        if root not in graph.pinned or reason == _OUTPUT_REASON:
            graph.pinned[root] = reason
    return graph
