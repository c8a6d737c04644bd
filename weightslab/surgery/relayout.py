"""The graph after an edit, computed from the graph before it (pure functions).

An edit is a :class:`KeyEdit`: classes removed (a prune), or new channels inserted
right after the channel of an *anchor* class (an add: :class:`Slot`). In a network
whose every op on channels is width-agnostic (``Graph.generic``), every tensor
that carries a class along a channel dimension carries it the same way after the
edit: removed classes disappear from every key table, and a new channel appears
right after each run of its anchor, with the run's length (one column after a
channels-last position, an H×W block after a flatten's block, one channel after a
concatenation's member). That is :func:`relayout`: the planned graph without a
trace. Other networks are traced at the new widths; :func:`relayout` then still
gives the followers' new shapes for that trace.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from weightslab.surgery.graph import Follower, Graph

__all__ = ["KeyEdit", "Slot", "relayout"]


@dataclass(frozen=True)
class Slot:
    """One new channel of an add: the class it goes after, and each producer's fresh key for it."""

    anchor: int
    keys: dict[str, int]


@dataclass(frozen=True)
class KeyEdit:
    """What an edit does to channel keys, before it is applied.

    Attributes:
        removed: the classes a prune removes.
        slots: the new channels of an add, in order.
        planned: producer name → the keys of its output channels after the edit.
        groups: grouped convolution name → its number of groups after the edit (when it changes).
        followers: follower name → its keys after the edit, where the anchors cannot say it (a new
            attention head: one entry per head, for ``3 · head_dim`` new rows).
    """

    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    slots: tuple[Slot, ...] = ()
    planned: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    followers: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def fresh(self) -> np.ndarray:
        """Every new key."""
        keys = [k for slot in self.slots for k in slot.keys.values()]
        return np.array(sorted(keys), dtype=np.int64)


def _delete(keys: np.ndarray, classes: np.ndarray, removed: np.ndarray) -> np.ndarray:
    return keys[~np.isin(classes, removed)] if len(removed) else keys


def _insert(
    keys: np.ndarray, classes: np.ndarray, by_anchor: dict[int, list[Slot]], owner: dict[int, str]
) -> np.ndarray:
    if not by_anchor or not len(keys):
        return keys
    starts = np.r_[0, np.flatnonzero(classes[1:] != classes[:-1]) + 1]
    ends = np.r_[starts[1:], len(keys)]
    run_classes = classes[starts]
    hit = np.isin(run_classes, np.fromiter(by_anchor, dtype=np.int64))
    positions: list[int] = []
    values: list[int] = []
    for start, end, anchor in zip(starts[hit].tolist(), ends[hit].tolist(), run_classes[hit].tolist()):
        producer = owner.get(int(keys[start]))
        for slot in by_anchor[anchor]:
            key = slot.keys.get(producer, next(iter(slot.keys.values()))) if producer else min(slot.keys.values())
            positions += [end] * (end - start)
            values += [key] * (end - start)
    return np.insert(keys, positions, values) if positions else keys


def relayout(graph: Graph, edit: KeyEdit) -> Graph:
    """The graph of the network after ``edit`` (exact for a ``generic`` graph; see the module docstring)."""
    owner = graph.producers_of()
    by_anchor: dict[int, list[Slot]] = defaultdict(list)
    for slot in edit.slots:
        by_anchor[slot.anchor].append(slot)

    def update(keys: np.ndarray) -> np.ndarray:
        classes = graph.classes_of(keys)
        kept = ~np.isin(classes, edit.removed) if len(edit.removed) else np.ones(len(keys), dtype=bool)
        return _insert(keys[kept], classes[kept], by_anchor, owner)

    fresh = edit.fresh
    key_count = max(graph.key_count, int(fresh.max()) + 1 if len(fresh) else 0)
    root = np.concatenate([graph.root, np.arange(len(graph.root), key_count, dtype=np.int64)])
    for slot in edit.slots:
        members = list(slot.keys.values())
        root[members] = min(members)
    followers = {name: Follower(f.dim, edit.followers[name] if name in edit.followers else update(f.keys), f.fill)
                 for name, f in graph.followers.items()}
    norm_groups = {name: (groups, update(keys)) for name, (groups, keys) in graph.norm_groups.items()}
    return graph.copy(
        out_keys={**graph.out_keys, **edit.planned},
        in_keys={name: update(keys) for name, keys in graph.in_keys.items()},
        bn_keys={name: update(keys) for name, keys in graph.bn_keys.items()},
        root=root,
        key_count=key_count,
        groups={**graph.groups, **edit.groups},
        followers=followers,
        norm_groups=norm_groups,
        adapters={name: (kind, update(keys)) for name, (kind, keys) in graph.adapters.items()},
        normalised={name: update(keys) for name, keys in graph.normalised.items()},
        sizes={name: update(keys) for name, keys in graph.sizes.items()},
        pinned=dict(graph.pinned),
        executed=set(graph.executed),
        depthwise=set(graph.depthwise),
        bn_origin=dict(graph.bn_origin),
    )
