"""Groups that must keep equal widths: grouped convolutions and group norms (pure functions).

A convolution with ``groups=g`` (other than a depthwise one, whose input channel c
and output channel c the tracer joins into one unit) splits its input channels
into g blocks of a and its output channels into g blocks of b, output block i
reading only input block i. An edit keeps it valid when every block keeps the
same width: a prune removes the same number of channels from every block, or
whole blocks (input block i and output block i go together); an add gives every
block the same number of new channels, each at the end of its block. A
``group_norm`` with G groups imposes the same on the channels it normalises,
except that no group may go whole (its ``num_groups`` is not in a checkpoint).

These functions read a :class:`Graph` and return what an edit must do or why it
cannot; ``plan.py`` turns the latter into refusals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightslab.surgery.graph import Graph

__all__ = ["Partition", "close_removal", "insertion_anchors", "partitions", "uneven_removal"]


@dataclass(frozen=True)
class Partition:
    """Channels split into ``blocks`` equal blocks that must keep equal widths.

    Attributes:
        owner: the layer or module that imposes it.
        side: which of its channels: ``"input"``, ``"output"`` or ``"normalised"``.
        keys: the keys of those channels, in the owner's order.
        blocks: the number of blocks.
        partner: index (in the list of :func:`partitions`) of the other side of a grouped
            convolution, whose block i goes with this one's block i; None for a group norm.
    """

    owner: str
    side: str
    keys: np.ndarray
    blocks: int
    partner: int | None = None

    @property
    def width(self) -> int:
        """Channels per block."""
        return len(self.keys) // self.blocks

    def block_classes(self, graph: Graph) -> np.ndarray:
        """``[blocks, width]`` class ids."""
        return graph.classes_of(self.keys).reshape(self.blocks, -1)

    def describe(self) -> str:
        if self.side == "normalised":
            return f"{self.owner} normalises them in {self.blocks} groups of {self.width} channels (group_norm)"
        return (f"{self.owner} is a grouped convolution (groups={self.blocks}) whose {self.side} channels form "
                f"{self.blocks} groups of {self.width}")


def partitions(graph: Graph) -> list[Partition]:
    """Every equal-width constraint of the graph."""
    parts: list[Partition] = []
    for name, groups in graph.groups.items():
        if name in graph.depthwise or name not in graph.in_keys:
            continue
        start = len(parts)
        parts.append(Partition(name, "input", graph.in_keys[name], groups, start + 1))
        parts.append(Partition(name, "output", graph.out_keys[name], groups, start))
    for module, (groups, keys) in graph.norm_groups.items():
        if groups > 1 and len(keys) % groups == 0:
            parts.append(Partition(module, "normalised", keys, groups))
    return parts


def close_removal(graph: Graph, parts: list[Partition], removed: set[int]) -> tuple[set[int], Partition | None]:
    """``removed`` plus the other side of every grouped-convolution block that loses all its channels.

    Returns:
        The closed set of classes, and the partition whose whole-block removal would need
        channels that cannot go (the model's input), or None.
    """
    removed = set(removed)
    while True:
        wanted = np.fromiter(removed, dtype=np.int64, count=len(removed))
        added: set[int] = set()
        for part in parts:
            if part.partner is None:
                continue
            full = np.isin(part.block_classes(graph), wanted).all(1)
            if not full.any():
                continue
            partner = parts[part.partner]
            needed = set(partner.block_classes(graph)[full].ravel().tolist()) - removed
            if -1 in needed:
                return removed, partner
            added |= needed
        if not added:
            return removed, None
        removed |= added


def uneven_removal(graph: Graph, parts: list[Partition], removed: set[int]) -> tuple[Partition, np.ndarray] | None:
    """The first partition whose kept blocks would lose different numbers of channels, and the counts."""
    wanted = np.fromiter(removed, dtype=np.int64, count=len(removed))
    for part in parts:
        gone = np.isin(part.block_classes(graph), wanted)
        counts = gone.sum(1)
        # A group norm keeps its num_groups (a checkpoint does not record it): no group may go whole.
        kept = counts[~gone.all(1)] if part.partner is not None else counts
        if len(kept) and (kept != kept[0]).any():
            return part, counts
    return None


def insertion_anchors(
    graph: Graph, parts: list[Partition], classes: np.ndarray, count: int
) -> list[tuple[int, int]] | str:
    """Where ``count`` new channels go in a group of channels with ``classes`` (in a producer's order).

    Returns:
        ``[(anchor class, n), ...]``: n new channels right after the channel of each anchor
        class; or, when no placement keeps every block equal, the reason.
    """
    members = set(classes.tolist())
    relevant = [p for p in parts if members & set(p.block_classes(graph).ravel().tolist())]
    if not relevant:
        return [(int(classes[-1]), count)]
    for part in relevant:
        if count % part.blocks:
            return (f"{part.describe()}, and every group must gain the same number of channels: add a multiple "
                    f"of {part.blocks} (e.g. neuron_count={part.blocks})")
    candidates = []
    for part in sorted(relevant, key=lambda p: -p.blocks):
        anchors = []
        for i, block in enumerate(part.block_classes(graph)):
            own = [int(c) for c in block if c in members]
            if not own:
                return f"{part.describe()}, and group {i} holds none of these channels, so it cannot gain any"
            anchors.append((own[-1], count // part.blocks))
        candidates.append(anchors)
    for anchors in candidates:
        if all(_even_gain(graph, part, anchors) for part in relevant):
            return anchors
    return "the groups of " + " and ".join(p.owner for p in relevant) + " do not line up, so no placement of " \
           "new channels keeps all of them equal"


def _even_gain(graph: Graph, part: Partition, anchors: list[tuple[int, int]]) -> bool:
    blocks = part.block_classes(graph)
    gains = [sum(n for anchor, n in anchors if anchor in set(block.tolist())) for block in blocks]
    return len(set(gains)) == 1
