"""Surgery plans: which rows and columns of which layer an edit keeps, drops or adds.

Planning is pure: it reads traced graphs (``graph.py``) and returns a
:class:`SurgeryPlan`, printable, with nothing mutated. First the edit is decided
in terms of channel keys (:func:`prune_keys`, :func:`add_keys`: the coupled
classes, whole groups of grouped convolutions, where new channels go; every
refusal is raised here, naming what was asked, what exists and what to do), then
the graph after the edit is computed (``relayout.py``, or a trace at the new
widths), and :func:`finish_plan` reads, for every layer and follower, where its
surviving and new channels land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from weightslab.errors import SurgeryError
from weightslab.events.domain import EventKind
from weightslab.surgery.graph import Graph
from weightslab.surgery.heads import add_heads, close_heads, head_set_of
from weightslab.surgery.partition import (
    Partition,
    close_removal,
    insertion_anchors,
    partitions,
    uneven_removal,
)
from weightslab.surgery.relayout import KeyEdit, Slot
from weightslab.surgery.tensor_ops import match_occurrences

__all__ = [
    "AttributeEdit",
    "ModuleEdit",
    "SurgeryPlan",
    "TensorEdit",
    "add_keys",
    "finish_plan",
    "prune_keys",
    "verb",
]

Label = Callable[[str], str]


@dataclass(frozen=True)
class ModuleEdit:
    """The edit of one layer: for each new row / column, its old index (-1: new).

    ``groups`` is the new number of groups of a grouped convolution (None: unchanged) and
    ``group_cols`` its weight's columns, per new group: the old column index within the
    group (-1: new), or None when its weight keeps its columns.
    """

    name: str
    row_source: np.ndarray | None = None
    col_source: np.ndarray | None = None
    groups: int | None = None
    group_cols: np.ndarray | None = None

    def describe(self) -> str:
        parts = []
        for what, source in (("neurons", self.row_source), ("inputs", self.col_source)):
            if source is None:
                continue
            kept = int((source >= 0).sum())
            added = len(source) - kept
            parts.append(f"{what} -> {len(source)} (kept {kept}, added {added})")
        if self.groups is not None:
            parts.append(f"groups -> {self.groups}")
        return f"{self.name}: " + "; ".join(parts)


@dataclass(frozen=True)
class TensorEdit:
    """A follower tensor (outside the ops layers) resized along ``dim``: old index per new one (-1: new)."""

    name: str
    dim: int
    source: np.ndarray
    fill: float

    def describe(self) -> str:
        kept = int((self.source >= 0).sum())
        return f"{self.name}: dim {self.dim} -> {len(self.source)} (kept {kept}, added {len(self.source) - kept})"


@dataclass(frozen=True)
class AttributeEdit:
    """A module whose width attribute follows the edit.

    ``kind``: ``layer_norm``, ``group_norm``, ``batch_norm`` (torch's attribute of that module), or
    ``size``: the integer attribute ``attr`` the model's code reshapes channels to (ViT's ``hidden_dim``).
    """

    module: str
    kind: str
    width: int
    attr: str = ""


@dataclass(frozen=True)
class SurgeryPlan:
    """A structural edit, ready to apply: one :class:`ModuleEdit` per touched layer, and its followers.

    ``graph`` is the dependency graph of the network after the edit (kept once it is applied).
    """

    kind: str
    layer_name: str
    edits: tuple[ModuleEdit, ...]
    tensors: tuple[TensorEdit, ...] = ()
    attributes: tuple[AttributeEdit, ...] = ()
    notes: tuple[str, ...] = ()
    graph: Graph | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        lines = [f"{self.kind} on {self.layer_name}:"]
        lines += [f"  {edit.describe()}" for edit in self.edits]
        lines += [f"  {tensor.describe()}" for tensor in self.tensors]
        lines += [f"  {a.module or 'model'}.{a.attr} -> {a.width}" for a in self.attributes if a.kind == "size"]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def verb(kind: str) -> str:
    """How a refusal says the operation: ``prune``, ``add neurons to``."""
    return "add neurons to" if kind == EventKind.ADD_NEURONS else kind


def _selected_keys(graph: Graph, name: str, label: Label, verb: str) -> np.ndarray:
    keys = graph.channel_keys(name)
    if (keys < 0).any():
        raise SurgeryError(
            f"cannot {verb} {label(name)}: its channels come straight from the model input, not from an "
            "ops layer; edit the layer that produces them instead."
        )
    return keys


def _hint(reason: str) -> str:
    if "model's output" in reason:
        return "Edit a hidden layer instead."
    return "Edit a layer whose channels do not pass through it."


def _counts(counts: np.ndarray, full: np.ndarray) -> str:
    kept = [(i, int(c)) for i, c in enumerate(counts.tolist()) if not full[i]]
    by_count: dict[int, list[int]] = {}
    for i, c in kept:
        by_count.setdefault(c, []).append(i)
    parts = []
    for c, blocks in sorted(by_count.items(), key=lambda item: len(item[1])):
        shown = ", ".join(map(str, blocks[:4])) + (", …" if len(blocks) > 4 else "")
        parts.append(f"{c} from group{'s' if len(blocks) > 1 else ''} {shown}")
    return " and ".join(parts)


def _examples(graph: Graph, part_classes: np.ndarray, chosen: np.ndarray) -> tuple[str, str]:
    """Index sets of the chosen layer: one channel from every group, and one whole group."""
    positions = [np.flatnonzero(np.isin(chosen, block)) for block in part_classes]
    if any(len(p) == 0 for p in positions):
        return "", ""
    one_each = [int(p[0]) for p in positions]
    whole = positions[0].tolist() if len(positions[0]) == part_classes.shape[1] else []

    def show(values: list[int]) -> str:
        return "{" + ", ".join(map(str, values[:4])) + (", …}" if len(values) > 4 else "}")

    return show(one_each), show(whole) if whole else ""


def _uneven(
    graph: Graph, part: Partition, counts: np.ndarray, wanted: np.ndarray, chosen: np.ndarray, refusal: str
) -> SurgeryError:
    """The refusal of a prune that would leave the groups of ``part`` unequal: what it removes, what is possible."""
    full = np.asarray(np.isin(part.block_classes(graph), wanted).all(1))
    one_each, whole = _examples(graph, part.block_classes(graph), chosen)
    width = part.width
    possible = (f"prune {part.blocks}, {2 * part.blocks}, … or {(width - 1) * part.blocks} channels, the same "
                f"number from every group{f' (e.g. {one_each})' if one_each else ''}")
    if part.partner is not None:
        whole_groups = f"whole groups of {width}{f' (e.g. {whole})' if whole else ''}"
        possible = f"{possible}, or {whole_groups}" if width > 1 else f"prune {whole_groups}"
    return SurgeryError(
        f"{refusal}: {part.describe()}, and every group must keep the same width, but this removes "
        f"{_counts(counts, full)}. So {possible}."
    )


def prune_keys(graph: Graph, name: str, indices: list[int], label: Label) -> KeyEdit:
    """The classes removed by pruning ``indices`` of layer ``name``, and the producers' keys after it.

    Raises:
        SurgeryError: pinned channels (model outputs, untraceable ops), groups of a grouped
            convolution or group norm left unequal, or a layer that would lose all its neurons.
    """
    keys = _selected_keys(graph, name, label, EventKind.PRUNE)
    classes = graph.classes_of(keys[indices])
    reason = graph.pin_reason(classes)
    if reason is not None:
        raise SurgeryError(f"cannot prune {label(name)}: {reason}. {_hint(reason)}")
    parts = partitions(graph)
    heads_closed = close_heads(graph, {int(c) for c in classes}, f"cannot prune {label(name)}")
    removed, blocked = close_removal(graph, parts, heads_closed)
    if blocked is not None:
        raise SurgeryError(
            f"cannot prune {label(name)}: {blocked.describe()}; this removes a whole group, whose input channels "
            "come straight from the model input. Prune the same number of channels from every group instead."
        )
    reason = graph.pin_reason(np.array(sorted(removed), dtype=np.int64))
    if reason is not None:
        raise SurgeryError(f"cannot prune {label(name)}: whole groups go with it, and {reason}.")
    wanted = np.array(sorted(removed), dtype=np.int64)
    uneven = uneven_removal(graph, parts, removed)
    if uneven is not None:
        raise _uneven(graph, uneven[0], uneven[1], wanted, graph.classes_of(keys), f"cannot prune {label(name)}")
    planned: dict[str, np.ndarray] = {}
    for table, is_producer in ((graph.out_keys, True), (graph.bn_keys, False)):
        for member, member_keys in table.items():
            mask = np.isin(graph.classes_of(member_keys), wanted)
            if mask.all():
                also = "" if member == name else f" (coupled with {label(name)})"
                raise SurgeryError(
                    f"cannot prune every neuron of {label(member)}{also}: it has {len(member_keys)} "
                    "neurons and all would go; keep at least one, or remove the layer from the model."
                )
            if is_producer and mask.any():
                planned[member] = member_keys[~mask]
    return KeyEdit(removed=wanted, planned=planned, groups=_groups_after_prune(graph, parts, wanted, planned))


def _groups_after_prune(
    graph: Graph, parts: list[Partition], wanted: np.ndarray, planned: dict[str, np.ndarray]
) -> dict[str, int]:
    groups = {}
    for conv in graph.depthwise:
        if conv in planned:
            groups[conv] = len(planned[conv])
    for part in parts:
        if part.side == "output" and part.owner not in graph.depthwise:
            full = int(np.isin(part.block_classes(graph), wanted).all(1).sum())
            if full:
                groups[part.owner] = part.blocks - full
    return groups


def add_keys(graph: Graph, name: str, count: int, label: Label) -> KeyEdit:
    """Where ``count`` new neurons go in the group of layer ``name``, and every producer's keys after it.

    Every producer coupled with the layer (residual partners, a depthwise convolution, a
    gate) gets ``count`` fresh keys, each right after the channel of its anchor class (at the
    end, or at the end of every group of a grouped convolution); their batch norms,
    followers and consumers follow.

    Raises:
        SurgeryError: pinned channels, a group whose members do not line up one to one (e.g. a
            concatenation feeding a residual addition), or a count that would leave groups unequal.
    """
    keys = _selected_keys(graph, name, label, "add neurons to")
    classes = graph.classes_of(keys)
    reason = graph.pin_reason(classes)
    if reason is not None:
        raise SurgeryError(f"cannot add neurons to {label(name)}: {reason}. {_hint(reason)}")
    heads = head_set_of(graph, name)
    if heads is not None:
        return add_heads(graph, heads[0], heads[1], name, count, label)
    class_set = set(classes.tolist())
    group = [p for p, k in graph.out_keys.items() if class_set & set(graph.classes_of(k).tolist())]
    if not group:
        raise SurgeryError(f"cannot add neurons to {label(name)}: no ops layer produces its channels.")
    if name not in graph.out_keys and not any(set(graph.classes_of(graph.out_keys[p]).tolist()) >= class_set
                                              for p in group):
        shown = ", ".join(label(p) for p in group[:3]) + (", …" if len(group) > 3 else "")
        raise SurgeryError(
            f"cannot add neurons to {label(name)}: its {len(classes)} channels come from {len(group)} layers "
            f"concatenated ({shown}), so no single place says where new ones go; add neurons to one of those "
            "layers instead (this layer follows)."
        )
    for producer in group:
        own = graph.classes_of(graph.out_keys[producer])
        if len(own) != len(classes) or set(own.tolist()) != class_set or len(set(own.tolist())) != len(own):
            raise SurgeryError(
                f"cannot add neurons to {label(name)}: it is coupled with {label(producer)}, whose {len(own)} "
                f"channels do not line up one to one with its {len(classes)} (a concatenation feeds a residual "
                "addition, or a depthwise convolution or group, for instance); edit the layers that feed the "
                "concatenation instead."
            )
    anchors = insertion_anchors(graph, partitions(graph), classes, count)
    if isinstance(anchors, str):
        raise SurgeryError(f"cannot add {count} neurons to {label(name)}: {anchors}.")
    slots: list[Slot] = []
    next_key = graph.key_count
    for anchor, n in anchors:
        for _ in range(n):
            slots.append(Slot(anchor, {producer: next_key + i for i, producer in enumerate(group)}))
            next_key += len(group)
    planned: dict[str, np.ndarray] = {}
    for producer in group:
        own_keys = graph.out_keys[producer]
        own = graph.classes_of(own_keys)
        positions = [int(np.flatnonzero(own == slot.anchor)[0]) + 1 for slot in slots]
        planned[producer] = np.insert(own_keys, positions, [slot.keys[producer] for slot in slots])
    groups = {conv: len(planned[conv]) for conv in graph.depthwise if conv in planned}
    return KeyEdit(slots=tuple(slots), planned=planned, groups=groups)


def finish_plan(
    kind: str,
    name: str,
    old: Graph,
    new: Graph,
    edit: KeyEdit,
    label: Label,
    order: list[str] | None = None,
) -> SurgeryPlan:
    """Turn the graphs before and after an edit into row/column sources for every touched layer and follower.

    Raises:
        SurgeryError: the graph after the edit moved channels in a way the edit does not explain
            (a coupling the tracer cannot resolve), or new neurons would be pinned.
    """
    if new.executed != old.executed:
        raise SurgeryError(f"cannot {verb(kind)} {label(name)}: the edit changes which layers the forward pass runs.")
    fresh = edit.fresh
    if len(fresh):
        fresh_roots = new.root[fresh]
        reason = new.pin_reason(fresh_roots)
        old_roots = set(new.root[: old.key_count].tolist())
        if reason is not None or old_roots & set(fresh_roots.tolist()):
            raise SurgeryError(
                f"cannot {verb(kind)} {label(name)}: the new neurons would be coupled with existing ones "
                f"({reason or 'the layout does not line up'}); the coupling cannot be resolved safely."
            )

    def source(member: str, old_keys: np.ndarray, new_keys: np.ndarray) -> np.ndarray:
        return _source(kind, name, member, old_keys, new_keys, old, edit.removed, fresh, label)

    edits = []
    names = list(dict.fromkeys([*(order or []), *old.out_keys, *old.bn_keys, *old.in_keys]))
    for member in names:
        row_source = col_source = None
        if member not in old.out_keys and member not in old.bn_keys and member not in old.in_keys:
            continue
        if member in edit.planned:
            row_source = source(member, old.out_keys[member], edit.planned[member])
        elif member in old.bn_keys and not np.array_equal(old.bn_keys[member], new.bn_keys[member]):
            row_source = source(member, old.bn_keys[member], new.bn_keys[member])
        if member in old.in_keys and not np.array_equal(old.in_keys[member], new.in_keys[member]):
            col_source = source(member, old.in_keys[member], new.in_keys[member])
        groups = group_cols = None
        if member in old.groups and (row_source is not None or col_source is not None):
            groups, group_cols = _grouped(kind, name, member, old, new, row_source, col_source, label)
        if row_source is not None or col_source is not None:
            edits.append(ModuleEdit(member, row_source, col_source, groups, group_cols))
    tensors = []
    for tensor_name, follower in old.followers.items():
        after = new.followers.get(tensor_name)
        if after is None:
            raise SurgeryError(f"cannot {verb(kind)} {label(name)}: after the edit {tensor_name} no longer follows the "
                               "channels it followed; refusing instead of guessing.")
        if not np.array_equal(follower.keys, after.keys):
            tensors.append(TensorEdit(tensor_name, follower.dim, source(tensor_name, follower.keys, after.keys),
                                      follower.fill))
    attributes = []
    for module, (norm, keys) in old.adapters.items():
        after_keys = new.adapters.get(module, (norm, keys))[1]
        if not np.array_equal(keys, after_keys):
            attributes.append(AttributeEdit(module, norm, len(after_keys)))
    for path, keys in old.sizes.items():
        after_keys = new.sizes.get(path, keys)
        if len(after_keys) != len(keys):
            owner, _, attr = path.rpartition(".")
            attributes.append(AttributeEdit(owner, "size", len(after_keys), attr))
    notes = tuple(
        f"{module} normalises these channels together: the outputs of its other channels change"
        for module, keys in old.normalised.items()
        if not np.array_equal(keys, new.normalised.get(module, keys))
    )
    return SurgeryPlan(kind, name, tuple(edits), tuple(tensors), tuple(attributes), notes, graph=new)


def _grouped(
    kind: str,
    name: str,
    member: str,
    old: Graph,
    new: Graph,
    row_source: np.ndarray | None,
    col_source: np.ndarray | None,
    label: Label,
) -> tuple[int | None, np.ndarray | None]:
    """The new groups and per-group weight columns of a grouped convolution; refuses a regrouping."""
    g_old = old.groups[member]
    g_new = new.groups.get(member, g_old)
    cols = col_source if col_source is not None else np.arange(len(old.in_keys[member]))
    rows = row_source if row_source is not None else np.arange(len(old.out_keys[member]))
    a_old = len(old.in_keys[member]) // g_old
    b_old = len(old.out_keys[member]) // g_old
    if len(cols) % g_new or len(rows) % g_new:
        raise SurgeryError(f"cannot {verb(kind)} {label(name)}: {label(member)} would not split into {g_new} equal groups.")
    by_cols = cols.reshape(g_new, -1)
    by_rows = rows.reshape(g_new, -1)
    # The old group each new group's columns and rows come from (-1: new), which must be one per group.
    origin = np.concatenate([np.where(by_cols >= 0, by_cols // a_old, -1), np.where(by_rows >= 0, by_rows // b_old, -1)], 1)
    highest = origin.max(1)
    lowest = np.where(origin >= 0, origin, np.iinfo(np.int64).max).min(1)
    mixed = np.flatnonzero((highest >= 0) & (lowest != highest))
    if len(mixed):
        raise SurgeryError(
            f"cannot {verb(kind)} {label(name)}: after the edit, group {int(mixed[0])} of {label(member)} would mix "
            "the channels of several of its groups; refusing instead of guessing."
        )
    local = np.where(by_cols >= 0, by_cols - np.maximum(highest, 0)[:, None] * a_old, -1)
    identity = g_new == g_old and local.shape[1] == a_old and (local == np.arange(a_old)).all()
    return (g_new if g_new != g_old else None), (None if identity else local)


def _source(
    kind: str,
    name: str,
    member: str,
    old_keys: np.ndarray,
    new_keys: np.ndarray,
    old: Graph,
    removed: np.ndarray,
    fresh: np.ndarray,
    label: Label,
) -> np.ndarray:
    source = match_occurrences(old_keys, new_keys)
    unmatched_new = new_keys[source < 0]
    dropped = np.ones(len(old_keys), dtype=bool)
    dropped[source[source >= 0]] = False
    explained_new = np.isin(unmatched_new, fresh).all()
    explained_drop = np.isin(old.classes_of(old_keys[dropped]), removed).all()
    if not (explained_new and explained_drop):
        raise SurgeryError(
            f"cannot {verb(kind)} {label(name)}: after the edit the inputs of {label(member)} would be rearranged "
            "in a way the tracer cannot resolve (a fixed slice, split or reshape of channels moves channels "
            "from one part to another); refusing instead of guessing."
        )
    return source
