"""The traced dependency graph: which channels of which layer flow where.

Every output channel of every Conv/Linear ops layer gets an integer *key*. The
tracer (``trace.py``) follows keys through the forward pass and records, for
every ops layer, the keys of its input columns (``-1``: not produced by an ops
layer, e.g. the model input), for every batch norm the keys of its channels, and
which keys were joined elementwise (residual additions, a depthwise convolution's
channel c in and out, a gate multiplied into a branch). Joined keys form a
*class*: channels that must be edited together, at the same index. A class is
*pinned* when editing it cannot be done safely (it reaches the model output, or
passes through an operation the tracer cannot follow); the reason is kept.

Besides the ops layers, the graph records the *followers*: tensors outside the
ops layers that are laid out along channels (the affine entries and running
statistics of a ``layer_norm`` / ``group_norm`` / ``batch_norm``, a position
embedding or class token added to or concatenated with a stream, a layer scale),
the modules whose integer attributes must follow a width (``nn.LayerNorm``'s
``normalized_shape``, ``nn.GroupNorm``'s ``num_channels``, a size the model's code reshapes
channels to, such as ViT's ``hidden_dim``), and the grouped
convolutions and group norms, whose groups must keep equal widths.

A graph is traced once and then kept: an edit computes the graph after it (by
tracing the network with the new widths, or, for a network whose every reshape is
width-agnostic, by a pure function of this one: ``relayout.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Follower", "Graph", "HeadSet", "PlannedLayout", "UnionFind"]


class UnionFind:
    """Union-find over non-negative integer keys (path halving); the smallest key is a class's root."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, key: int) -> int:
        parent = self.parent
        while parent.get(key, key) != key:
            nxt = parent[key]
            parent[key] = parent.get(nxt, nxt)
            key = parent[key]
        return key

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo

    def roots(self, size: int) -> np.ndarray:
        """Root of every key ``0..size-1``."""
        root = np.arange(size, dtype=np.int64)
        for key in self.parent:
            if key < size:
                root[key] = self.find(key)
        return root


@dataclass(frozen=True)
class Follower:
    """A tensor outside the ops layers laid out along channels along one dimension.

    Attributes:
        dim: the dimension indexed by channels.
        keys: the channel key at each index of ``dim``.
        fill: the value of the entries of new channels (0 for what is added, 1 for what scales).
    """

    dim: int
    keys: np.ndarray
    fill: float = 0.0


@dataclass(frozen=True)
class HeadSet:
    """The attention heads of one converted window attention module (Swin, Swin v2, MaxViT).

    Attributes:
        qkv: the name of the query/key/value projection (its rows: 3 blocks of ``heads × head_dim``).
        blocks: ``[heads, 3 · head_dim]``: the keys of head h's query, key and value rows.
        bias: the name of the layer with one output per head (Swin v2's ``cpb_mlp.2``), or "".
        bias_keys: ``[heads]``: its keys (empty without it).
        followers: tensors with one entry per head (relative position bias table, logit scale) → their dim.
    """

    qkv: str
    blocks: np.ndarray
    bias: str = ""
    bias_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    followers: tuple[tuple[str, int], ...] = ()

    @property
    def heads(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.blocks.shape[1]) // 3

    def representatives(self) -> np.ndarray:
        """One key per head, the one its per-head tensors are keyed by: its bias layer's, else its first query's."""
        return self.bias_keys if len(self.bias_keys) else self.blocks[:, 0]


@dataclass(frozen=True)
class PlannedLayout:
    """The widths a planned trace runs the network at (what an edit is about to make).

    Attributes:
        keys: producer name → the keys its output channels will have (survivors keep
            theirs, new channels get fresh ones); other producers keep theirs.
        groups: grouped convolution name → its number of groups after the edit.
        tensors: follower name → its shape after the edit.
        sizes: ``module.attribute`` → its value after the edit (see ``Graph.sizes``); the trace sets it
            for the time of the forward pass.
    """

    keys: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Graph:
    """Result of one trace.

    Attributes:
        out_keys: producer layer name → key of each output channel.
        in_keys: Conv/Linear layer name → key of each input column (-1: external).
        bn_keys: batch-norm layer name → key of each channel (-1: external).
        bn_origin: batch-norm name → the producer whose output it normalises directly, if any.
        root: class id of every key.
        pinned: class id → why that class cannot be edited.
        executed: names of the ops layers the forward pass ran.
        key_count: number of keys.
        groups: grouped convolution name → its number of groups (only convolutions with groups > 1).
        depthwise: the grouped convolutions whose input channel c and output channel c are one unit.
        followers: qualified tensor name → :class:`Follower`.
        norm_groups: module name → (number of groups, keys of the channels) of a ``group_norm``.
        adapters: module name → the torch module kind whose width attributes follow its channels
            (``"layer_norm"``, ``"group_norm"``, ``"batch_norm"``), with the keys of those channels.
        normalised: module name → keys of channels whose outputs depend on each other's values
            (a ``layer_norm`` / ``group_norm``: adding a channel changes the others' statistics).
        generic: every op the keys passed through is width-agnostic (flatten, permute, cat,
            pointwise, pooling, ...), so the graph after an edit can be computed without a trace.
        generic_reason: the first op that made the graph not ``generic``.
        read_by: ops layer name → the op that read its weights directly instead of calling it
            (e.g. ``multi_head_attention_forward`` reading an attention's ``out_proj``).
        sizes: ``module.attribute`` → the keys of the channels whose number that integer attribute is
            (a reshape of a channel dimension to it, e.g. ViT's ``hidden_dim``): it follows their width.
        heads: window attention module name → its :class:`HeadSet` (heads are edited whole).
    """

    out_keys: dict[str, np.ndarray] = field(default_factory=dict)
    in_keys: dict[str, np.ndarray] = field(default_factory=dict)
    bn_keys: dict[str, np.ndarray] = field(default_factory=dict)
    bn_origin: dict[str, str | None] = field(default_factory=dict)
    root: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pinned: dict[int, str] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)
    key_count: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    depthwise: set[str] = field(default_factory=set)
    followers: dict[str, Follower] = field(default_factory=dict)
    norm_groups: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    adapters: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    normalised: dict[str, np.ndarray] = field(default_factory=dict)
    generic: bool = True
    generic_reason: str = ""
    read_by: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, np.ndarray] = field(default_factory=dict)
    heads: dict[str, HeadSet] = field(default_factory=dict)

    def copy(self, **changes: object) -> Graph:
        """A shallow copy with ``changes`` applied (tables are replaced, never mutated in place)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def channel_keys(self, name: str) -> np.ndarray:
        """Keys of a layer's neurons (output channels of a producer, channels of a batch norm)."""
        if name in self.out_keys:
            return self.out_keys[name]
        return self.bn_keys[name]

    def classes_of(self, keys: np.ndarray) -> np.ndarray:
        """Class ids of ``keys`` (-1 stays -1)."""
        keys = np.asarray(keys, dtype=np.int64)
        out = np.full(keys.shape, -1, dtype=np.int64)
        ok = keys >= 0
        out[ok] = self.root[keys[ok]]
        return out

    def pin_reason(self, classes: np.ndarray) -> str | None:
        """The reason one of ``classes`` is pinned, preferring 'model output', else None."""
        reasons = [self.pinned[c] for c in np.unique(classes) if c >= 0 and c in self.pinned]
        if not reasons:
            return None
        outputs = [r for r in reasons if "model's output" in r]
        return (outputs or reasons)[0]

    def producers_of(self) -> dict[int, str]:
        """Key → the producer that owns it."""
        owner: dict[int, str] = {}
        for name, keys in self.out_keys.items():
            for k in keys.tolist():
                owner[k] = name
        return owner
