"""The traced dependency graph: which channels of which layer flow where.

Every output channel of every Conv/Linear ops layer gets an integer *key*. The
tracer (``trace.py``) follows keys through the forward pass and records, for
every ops layer, the keys of its input columns (``-1``: not produced by an ops
layer, e.g. the model input), for every batch norm the keys of its channels, and
which keys were joined elementwise (residual additions). Joined keys form a
*class*: channels that must be edited together, at the same index. A class is
*pinned* when editing it cannot be done safely (it reaches the model output, or
passes through an operation the tracer cannot follow); the reason is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Graph", "UnionFind"]


class UnionFind:
    """Union-find over non-negative integer keys (path halving)."""

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
        return np.array([self.find(k) for k in range(size)], dtype=np.int64)


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
    """

    out_keys: dict[str, np.ndarray] = field(default_factory=dict)
    in_keys: dict[str, np.ndarray] = field(default_factory=dict)
    bn_keys: dict[str, np.ndarray] = field(default_factory=dict)
    bn_origin: dict[str, str | None] = field(default_factory=dict)
    root: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pinned: dict[int, str] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)
    key_count: int = 0

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
