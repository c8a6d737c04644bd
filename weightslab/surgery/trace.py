"""Dependency tracing: follow channel keys through one forward pass of the network.

A ``TorchFunctionMode`` intercepts every torch function the forward pass calls
(so ``x.view(x.size(0), -1)``, ``torch.flatten``, ``out += identity``, ``torch.cat``
all count) and computes, next to each activation, an int64 *key tensor* of the
same shape (``keys.py``): the key of the producer channel each element comes from.
The rules are few and generic (``trace_rules.py`` lists the ops, ``trace_ops.py``
and ``trace_followers.py`` apply them; this module holds the mode and the layers):

- pointwise ops (relu, dropout, add, mul, ...) keep keys; two keyed operands are
  joined elementwise (a residual addition couples its members);
- shape ops (view, flatten, permute, cat, getitem, chunk, contiguous, ...) are
  applied to the key tensor itself, so offsets of a concatenation, H×W column
  blocks of a flatten and a channel shuffle come out right by construction;
- spatial ops (pooling, padding, interpolation) and reductions over spatial
  dims keep each channel's key;
- a layer reads each input column with one weight column: keys met in the same
  column (tokens, positions) are joined;
- a depthwise convolution joins its input channel c with its output channel c;
  any other grouped convolution is recorded with its groups;
- ``layer_norm``, ``group_norm`` and ``batch_norm`` keep keys, and their affine
  entries and running statistics become *followers*, as do parameters added to,
  multiplied with or concatenated to a stream (position embeddings, class tokens,
  layer scales);
- anything else pins the keys it touches (editing them is refused, with the
  op's name and module in the message), as do keys that reach the model's output;
- a network whose keyed tensors meet only width-agnostic ops is marked ``generic``:
  the graph after an edit is then computed without a trace (``relayout.py``).

The ops layers, while traced, compute with zero weights shaped to their actual
input (and to a planned width when one is given), so a *planned* trace checks
that the forward pass still works after an edit before anything is mutated.
Tracing never touches parameters, buffers, statistics or the model age.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from weightslab.surgery.graph import Graph, PlannedLayout, UnionFind
from weightslab.surgery.keys import (
    EXTERNAL,
    compact,
    key_dims,
    normalize_dim,
    recompact,
)
from weightslab.surgery.modules import BatchNorm2dWithNeuronOps, Conv2dWithNeuronOps, NeuronLayer
from weightslab.surgery.trace_followers import follow_norm, follow_recurrent, recurrent_layer
from weightslab.surgery.trace_ops import (
    follow_pad,
    follow_pointwise,
    follow_reduce,
    follow_shape,
    follow_spatial,
)
from weightslab.surgery.trace_rules import (
    FACTORIES,
    MUTATING,
    NORMS,
    POINTWISE,
    REDUCE,
    SHAPE,
    SIZE_READS,
    SPATIAL,
    arg,
    op_name,
)

__all__ = ["OUTPUT_REASON", "TracedForwardError", "Tracer", "loose_tensors", "trace_network"]

OUTPUT_REASON = "its neurons reach the model's output (they are the model's outputs)"
_KEY_LIMIT = 1 << 31  # keys stay below this, so a pair of keys packs into one int64
_FOLLOWS_PARAMETER = frozenset({"expand", "expand_as", "broadcast_to", "to", "type_as", "float", "half", "double",
                                "bfloat16", "contiguous", "clone", "detach", "get"})
_CONTRACTING = frozenset({"matmul", "bmm", "baddbmm", "einsum", "mm", "scaled_dot_product_attention",
                          "multi_head_attention_forward", "softmax", "log_softmax"})
_WEIGHTED = frozenset({"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                       "conv_transpose3d", "bilinear", "embedding"})
_RECURRENT = frozenset({"lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell"})


class TracedForwardError(RuntimeError):
    """The traced forward pass raised inside a torch op; the message names the op and its module."""


def loose_tensors(network: nn.Module, layer_names: Mapping[NeuronLayer, str]) -> dict[str, torch.Tensor]:
    """The floating-point parameters and buffers of ``network`` outside its ops layers, by qualified name."""
    own = {id(t) for layer in layer_names for t in (*layer.parameters(recurse=False), *layer.buffers(recurse=False))}  # type: ignore[attr-defined]
    found: dict[str, torch.Tensor] = {}
    for name, tensor in (*network.named_parameters(), *network.named_buffers()):
        if id(tensor) not in own and tensor.is_floating_point() and tensor.dim() > 0 and tensor.numel() > 0:
            found[name] = tensor
    return found


def _why_pinned(name: str, where: str, module: nn.Module | None = None) -> str:
    attr = "n_heads" if isinstance(getattr(module, "n_heads", None), int) else "num_heads"  # MaxViT: n_heads
    heads = getattr(module, attr, None)
    if name in _CONTRACTING or (name == "normalize" and isinstance(heads, int)):  # Swin v2: cosine attention
        if isinstance(heads, int) and name in ("scaled_dot_product_attention", "matmul", "bmm", "einsum", "softmax",
                                               "normalize"):
            size = getattr(module, "head_dim", None)
            shape = f"{attr}={heads}" + (f", head_dim={size}" if isinstance(size, int) else "")
            return f"they are the queries, keys or values of the attention heads{where} ({shape} of that module), " \
                   "which `{name}` multiplies with each other; surgery edits the residual stream around attention " \
                   "and its MLP layers, not the heads".replace("{name}", name)
        return f"they pass through `{name}`{where}, which multiplies activations with each other (attention or a " \
               "similar product), and surgery does not follow that"
    if name in _WEIGHTED:
        return f"they are read by `{name}`{where} with weights outside an ops layer (a module convert_to_ops " \
               "does not convert)"
    if name in _RECURRENT:
        return f"they feed the recurrent layer `{name}`{where}, which surgery does not edit"
    return f"they pass through `{name}`{where}, which mixes or reorders neurons"


class Tracer(TorchFunctionMode):
    """The TorchFunctionMode of one trace: the key tensors, joins, pins and the graph being built."""

    def __init__(
        self,
        names: Mapping[NeuronLayer, str],
        bases: Mapping[str, np.ndarray],
        planned: PlannedLayout,
        loose: Mapping[str, torch.Tensor],
        module_names: Mapping[nn.Module, str],
    ) -> None:
        super().__init__()
        self.names = names
        self.bases = bases
        self.planned = planned
        self.module_names = module_names
        self.tags: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor, str | None]] = {}
        self.loose: dict[int, tuple[str, torch.Tensor]] = {id(t): (n, t) for n, t in loose.items()}
        self.by_name = dict(loose)  # the tensor a follower is while traced (its stand-in in a planned trace)
        self.stand_ins: dict[int, torch.Tensor] = {}  # id of a follower → a zero tensor of its planned shape
        for name, shape in planned.tensors.items():
            if name in loose:
                stand_in = torch.zeros(shape, dtype=loose[name].dtype, device=loose[name].device)
                self.stand_ins[id(loose[name])] = stand_in
                self.loose[id(stand_in)] = (name, stand_in)
                self.by_name[name] = stand_in
        self.derived: dict[int, tuple[weakref.ref[torch.Tensor], str, int]] = {}
        self.weights: dict[int, Any] = {id(p): layer for layer in names for p in layer.parameters(recurse=False)}  # type: ignore[attr-defined]
        self.suppress = 0
        self.uf = UnionFind()
        self.pins: dict[int, str] = {}
        self.graph = Graph()
        self.stack: list[tuple[str, nn.Module]] = []
        self.failed_at = ""  # the op running, while it runs: where a forward that raises failed

    # -- tags -----------------------------------------------------------------------------------------------

    def tag(self, tensor: torch.Tensor, keys: torch.Tensor, origin: str | None) -> None:
        ident = id(tensor)
        tags = self.tags

        def _drop(_: Any, ident: int = ident) -> None:
            tags.pop(ident, None)

        tags[ident] = (weakref.ref(tensor, _drop), recompact(keys), origin)

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

    def parameter_of(self, value: Any) -> tuple[str, torch.Tensor, int] | None:
        """(name, tensor, offset) when ``value`` is a loose tensor or a broadcast of one (offset: added dims)."""
        if not isinstance(value, torch.Tensor):
            return None
        found = self.loose.get(id(value))
        if found is not None and found[1] is value:
            return found[0], found[1], 0
        entry = self.derived.get(id(value))
        if entry is None or entry[0]() is not value:
            return None
        name, offset = entry[1], entry[2]
        return name, self.by_name[name], offset

    def pin(self, keys: torch.Tensor | np.ndarray, reason: str, overwrite: bool = False) -> None:
        small = compact(keys) if isinstance(keys, torch.Tensor) else keys
        for k in np.unique(np.asarray(small)).tolist():
            if k >= 0 and (overwrite or k not in self.pins):
                self.pins[k] = reason

    def join(self, a: torch.Tensor, b: torch.Tensor) -> None:
        both = (a >= 0) & (b >= 0) & (a != b)
        if both.any():
            codes = torch.unique(a[both] * _KEY_LIMIT + b[both]).tolist()
            for code in codes:
                self.uf.union(code // _KEY_LIMIT, code % _KEY_LIMIT)

    def where(self) -> str:
        return f" in {self.stack[-1][0] or 'the model'}" if self.stack else ""

    def not_generic(self, reason: str) -> None:
        if self.graph.generic:
            self.graph.generic = False
            self.graph.generic_reason = reason + self.where()

    # -- modules --------------------------------------------------------------------------------------------

    @contextmanager
    def modules_followed(self) -> Iterator[None]:
        def enter(module: nn.Module, args: Any) -> None:
            self.stack.append((self.module_names.get(module, "?"), module))

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if self.stack:
                self.stack.pop()

        handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- the interception -----------------------------------------------------------------------------------

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.suppress:
            return func(*args, **kwargs)
        if self.stand_ins:
            args, kwargs = tree_map(lambda v: self.stand_ins.get(id(v), v) if isinstance(v, torch.Tensor) else v,
                                    (args, kwargs))
        leaves, _ = tree_flatten((args, kwargs))
        tagged = [t for t in leaves if self.get(t) is not None]
        name = op_name(func)
        owned = [self.weights[id(t)] for t in leaves if isinstance(t, torch.Tensor) and id(t) in self.weights]
        if owned:
            layer = owned[0]
            if name == "linear" and len(owned) <= 2 and arg(args, kwargs, 1, "weight") is layer.weight:
                # The layer's weights used functionally (e.g. attention code): the same as calling the layer.
                return self.layer_forward(layer, args[0])
            for other in owned:
                self.graph.read_by.setdefault(self.names[other], f"`{name}`{self.where()}")
        if not tagged:
            self.failed_at = f"`{name}`{self.where()}"
            out = func(*args, **kwargs)
            self.failed_at = ""
            self._follow_parameter(name, leaves, out)
            return out
        if name in NORMS and self.get(args[0]) is not None:
            return follow_norm(self, name, func, args, kwargs)
        if name in ("lstm", "gru", "rnn_tanh", "rnn_relu") and self.get(args[0]) is not None:
            return follow_recurrent(self, name, func, args, kwargs)
        self.failed_at = f"`{name}`{self.where()}"
        try:
            if name == "scaled_dot_product_attention" and len(args) >= 3:
                # Only its shape matters to a trace (the values are those of zero weights): skip the product.
                q, v = args[0], args[2]
                torch.broadcast_shapes(q.shape[:-2], args[1].shape[:-2], v.shape[:-2])
                out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
            else:
                out = func(*args, **kwargs)
        except Exception:
            self.failed_at += self._constants(leaves)
            raise
        self.failed_at = ""
        try:
            self._propagate(name, func, args, kwargs, out, tagged)
        except Exception as error:  # noqa: BLE001 - an op we cannot follow pins, it never breaks the trace
            for t in tagged:
                self.pin(self.keys(t), f"they pass through `{name}`{self.where()}, which the tracer could not follow "
                                       f"({error})")
        return out

    def _constants(self, leaves: list[Any]) -> str:
        """The integer attributes of the running module among an op's arguments: sizes its code fixes."""
        if not self.stack:
            return ""
        sizes = {v for v in leaves if isinstance(v, int) and not isinstance(v, bool) and v > 1}
        module = self.stack[-1][1]
        found = [f"{attr}={value}" for attr, value in sorted(vars(module).items())
                 if not attr.startswith("_") and isinstance(value, int) and not isinstance(value, bool)
                 and value in sizes]
        return f" (with {', '.join(found)} of that module)" if found else ""

    def _follow_parameter(self, name: str, leaves: list[Any], out: Any) -> None:
        if name not in _FOLLOWS_PARAMETER or not isinstance(out, torch.Tensor):
            return
        for leaf in leaves:
            found = self.parameter_of(leaf)
            if found is not None:
                offset = found[2] + out.dim() - leaf.dim()
                self.derived[id(out)] = (weakref.ref(out), found[0], offset)
                return

    def _propagate(self, name: str, func: Any, args: Any, kwargs: Any, out: Any, tagged: list) -> None:
        if name in SIZE_READS or (name == "get" and isinstance(out, torch.Size)):
            self._size_read(name, args, kwargs)
            return
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name in ("dim", "stride", "is_contiguous", "is_floating_point") or name in FACTORIES:
            return
        if not outs:
            if name in MUTATING:
                for t in tagged:
                    self.pin(self.keys(t), f"they are modified in place by `{name}`{self.where()}")
            return
        if name in POINTWISE or (name in ("max", "min") and isinstance(arg(args, kwargs, 1, "other"), torch.Tensor)):
            follow_pointwise(self, name, args, kwargs, outs[0])
        elif name in SHAPE or name == "get":  # "get": tensor properties such as .data or .T
            follow_shape(self, name, func, args, kwargs, out, tagged)
        elif name == "pad":
            follow_pad(self, args, kwargs, outs[0])
        elif name in SPATIAL:
            follow_spatial(self, name, args, outs)
        elif name in REDUCE:
            follow_reduce(self, name, args, kwargs, outs)
        else:
            reason = _why_pinned(name, self.where(), self.stack[-1][1] if self.stack else None)
            for t in tagged:
                self.pin(self.keys(t), reason)
            if len(outs) == 1 and outs[0].shape == tagged[0].shape:
                # Keep following (pinned) keys, so that reaching the output is still reported as such.
                self.tag(outs[0], self.keys(tagged[0]), None)

    def _size_read(self, name: str, args: Any, kwargs: Any) -> None:
        entry = self.get(args[0])
        if entry is None:
            return
        dims = key_dims(entry[0])
        dim = arg(args, kwargs, 1, "dim") if name == "size" else None
        if dim is not None:
            dims &= {normalize_dim(dim, args[0].dim())}
        if dims:
            self.not_generic(f"the code reads the size of a channel dimension (`{name}`)")

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
            columns = self._columns(name, keys_in, x, layer.channel_dim, is_bn=False)
            if isinstance(layer, Conv2dWithNeuronOps):
                out = self._conv_output(name, layer, x, columns, out_keys)
                shape = [1, -1] + [1] * (out.dim() - 2)
            else:
                out = x.new_zeros((*x.shape[:-1], len(out_keys)))
                shape = [1] * (out.dim() - 1) + [-1]
            self.graph.executed.add(name)
            self.graph.out_keys[name] = out_keys.numpy()
            self.tag(out, out_keys.view(shape).expand(out.shape), name)
            return out
        finally:
            self.suppress -= 1

    def recurrent_forward(self, layer: NeuronLayer, x: torch.Tensor, hx: Any, lstm: bool) -> tuple[torch.Tensor, Any]:
        """A recurrent ops layer's call (see :func:`~weightslab.surgery.trace_followers.recurrent_layer`)."""
        self.suppress += 1
        try:
            return recurrent_layer(self, layer, x, hx, lstm)
        finally:
            self.suppress -= 1

    def _conv_output(
        self, name: str, layer: Any, x: torch.Tensor, columns: np.ndarray, out_keys: torch.Tensor
    ) -> torch.Tensor:
        groups = self.planned.groups.get(name, layer.groups)
        if x.shape[1] % groups or len(out_keys) % groups:
            raise RuntimeError(
                f"{name} would have {x.shape[1]} input and {len(out_keys)} output channels in {groups} groups"
            )
        # Only the output shape matters: compute it on the meta device, for free.
        meta_x = torch.empty(x.shape, device="meta", dtype=x.dtype)
        weight = torch.empty((len(out_keys), x.shape[1] // groups, *layer.kernel_size), device="meta", dtype=x.dtype)
        if layer.padding_mode != "zeros":
            meta_x = nn.functional.pad(meta_x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            padding: Any = 0
        else:
            padding = layer.padding
        shape = nn.functional.conv2d(meta_x, weight, None, layer.stride, padding, layer.dilation, groups).shape
        if groups != 1:
            self.graph.groups[name] = groups
            if x.shape[1] == groups == len(out_keys) and (columns >= 0).all():
                # Depthwise: input channel c and output channel c are one unit.
                self.join(torch.as_tensor(columns), out_keys)
                self.graph.depthwise.add(name)
        return x.new_zeros(shape)

    def columns_of(self, keys: torch.Tensor, dim: int, what: str) -> np.ndarray:
        """The key of each index along ``dim``; keys met at one index (tokens, positions) are joined."""
        width = keys.shape[dim]
        small = compact(keys).movedim(dim, -1)
        if small.shape[-1] != width:
            small = small.expand(*small.shape[:-1], width)
        flat = small.reshape(-1, width)
        first = flat[0]
        if flat.shape[0] > 1:
            rest = flat[1:]
            mixed = (rest < 0) != (first < 0)
            if mixed.any():
                self.pin(torch.cat([rest[mixed], first.expand_as(rest)[mixed]]),
                         f"{what}{self.where()} reads values of ops layers and external values as one channel")
            self.join(first.expand_as(rest), rest)
        return first.numpy().copy()

    def _columns(self, name: str, keys: torch.Tensor | None, x: torch.Tensor, dim: int, is_bn: bool) -> np.ndarray:
        width = x.shape[dim]
        if keys is None:
            columns = np.full(width, EXTERNAL, dtype=np.int64)
        else:
            columns = self.columns_of(keys, dim % x.dim(), f"layer {name}")
        table = self.graph.bn_keys if is_bn else self.graph.in_keys
        previous = table.get(name)
        if previous is not None and not np.array_equal(previous, columns):
            reason = f"layer {name} runs more than once with differently arranged inputs"
            self.pin(previous, reason)
            self.pin(columns, reason)
        table[name] = columns
        return columns


def trace_network(
    network: torch.nn.Module,
    example: tuple[Any, ...],
    layer_names: Mapping[NeuronLayer, str],
    planned: PlannedLayout | None = None,
) -> Graph:
    """Trace ``network`` on ``example`` inputs and return its :class:`Graph`.

    Args:
        network: the network (its ops layers are switched to trace mode for the call).
        example: positional inputs of one forward pass (a small dummy batch).
        layer_names: every ops layer of the network → its qualified name.
        planned: for a planned trace, the widths to trace at (see :class:`PlannedLayout`);
            producers it does not name keep ``0..width`` numbering.

    Raises:
        Exception: whatever the forward pass raises (e.g. a hard-coded shape that
        an edit would break); the caller turns it into a refusal.
    """
    planned = planned or PlannedLayout()
    bases = {name: np.asarray(keys, dtype=np.int64) for name, keys in planned.keys.items()}
    next_key = max([0] + [int(k.max()) + 1 for k in bases.values() if len(k)])
    for layer, name in layer_names.items():
        if isinstance(layer, BatchNorm2dWithNeuronOps) or name in bases:
            continue
        bases[name] = np.arange(next_key, next_key + layer.neuron_count, dtype=np.int64)
        next_key += layer.neuron_count
    key_count = next_key
    module_names = {m: n for n, m in network.named_modules()}
    tracer = Tracer(layer_names, bases, planned, loose_tensors(network, layer_names), module_names)
    modes = {m: m.training for m in network.modules()}
    sizes = []  # (module, attribute, value): the sizes a planned trace sets for the time of the forward pass
    for path, value in planned.sizes.items():
        owner_name, _, attr = path.rpartition(".")
        owner = network.get_submodule(owner_name)
        sizes.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)
    for layer in layer_names:
        layer._layer_state.trace = tracer
    network.eval()
    try:
        with torch.no_grad(), tracer.modules_followed(), tracer:
            output = network(*example)
            for leaf in tree_flatten(output)[0]:
                entry = tracer.get(leaf)
                if entry is not None:
                    tracer.pin(entry[0], OUTPUT_REASON, overwrite=True)
    except Exception as error:
        if tracer.failed_at:
            raise TracedForwardError(f"{tracer.failed_at} raised: {error}") from error
        raise
    finally:
        for layer in layer_names:
            layer._layer_state.trace = None
        for module, training in modes.items():
            module.training = training
        for owner, attr, value in reversed(sizes):
            setattr(owner, attr, value)
    graph = tracer.graph
    graph.key_count = key_count
    graph.root = tracer.uf.roots(key_count)
    for key, reason in tracer.pins.items():
        root = int(graph.root[key])
        if root not in graph.pinned or reason == OUTPUT_REASON:
            graph.pinned[root] = reason
    return graph
