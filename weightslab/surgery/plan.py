"""Surgery plans: which rows and columns of which layer an edit keeps, drops or adds.

Planning is pure: it reads traced graphs (``graph.py``) and returns a
:class:`SurgeryPlan`, printable, with nothing mutated. A plan is computed in two
traces: the current one says which channels are coupled, a *planned* trace (run
with the new widths) says where the surviving and new channels land in every
consumer, and proves the forward pass still works after the edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightslab.errors import SurgeryError
from weightslab.events.domain import EventKind
from weightslab.surgery.graph import Graph
from weightslab.surgery.tensor_ops import match_occurrences

__all__ = ["ModuleEdit", "SurgeryPlan", "add_keys", "finish_plan", "prune_keys"]

Label = Callable[[str], str]


@dataclass(frozen=True)
class ModuleEdit:
    """The edit of one layer: for each new row / column, its old index (-1: new)."""

    name: str
    row_source: np.ndarray | None = None
    col_source: np.ndarray | None = None

    def describe(self) -> str:
        parts = []
        for what, source in (("neurons", self.row_source), ("inputs", self.col_source)):
            if source is None:
                continue
            kept = int((source >= 0).sum())
            added = len(source) - kept
            parts.append(f"{what} -> {len(source)} (kept {kept}, added {added})")
        return f"{self.name}: " + "; ".join(parts)


@dataclass(frozen=True)
class SurgeryPlan:
    """A structural edit, ready to apply: one :class:`ModuleEdit` per touched layer."""

    kind: str
    layer_name: str
    edits: tuple[ModuleEdit, ...]

    def __str__(self) -> str:
        lines = [f"{self.kind} on {self.layer_name}:"]
        lines += [f"  {edit.describe()}" for edit in self.edits]
        return "\n".join(lines)


def _selected_keys(graph: Graph, name: str, label: Label, verb: str) -> np.ndarray:
    keys = graph.channel_keys(name)
    if (keys < 0).any():
        raise SurgeryError(
            f"cannot {verb} {label(name)}: its channels come straight from the model input, not from an "
            "ops layer; edit the layer that produces them instead."
        )
    return keys


def prune_keys(
    graph: Graph, name: str, indices: list[int], label: Label
) -> tuple[set[int], dict[str, np.ndarray]]:
    """Classes removed by pruning ``indices`` of layer ``name``, and the planned producer keys.

    Raises:
        SurgeryError: pinned channels (model outputs, untraceable ops) or a layer of the
            coupled group that would lose all its neurons.
    """
    keys = _selected_keys(graph, name, label, EventKind.PRUNE)[indices]
    classes = graph.classes_of(keys)
    reason = graph.pin_reason(classes)
    if reason is not None:
        raise SurgeryError(f"cannot prune {label(name)}: {reason}. Edit a hidden layer instead.")
    removed = {int(c) for c in classes}
    wanted = np.array(sorted(removed), dtype=np.int64)
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
    return removed, planned


def add_keys(graph: Graph, name: str, count: int, label: Label) -> tuple[dict[str, np.ndarray], set[int]]:
    """Planned producer keys for adding ``count`` neurons to the group of layer ``name``.

    Every producer coupled with the layer (residual partners) gets ``count`` fresh keys
    appended; their batch norms and consumers follow in the planned trace.

    Raises:
        SurgeryError: pinned channels, or a group whose members do not line up one to
            one (e.g. a concatenation feeding a residual addition).
    """
    keys = _selected_keys(graph, name, label, "add neurons to")
    classes = graph.classes_of(keys)
    reason = graph.pin_reason(classes)
    if reason is not None:
        raise SurgeryError(f"cannot add neurons to {label(name)}: {reason}. Edit a hidden layer instead.")
    class_set = set(classes.tolist())
    group = [p for p, k in graph.out_keys.items() if class_set & set(graph.classes_of(k).tolist())]
    if not group:
        raise SurgeryError(f"cannot add neurons to {label(name)}: no ops layer produces its channels.")
    for producer in group:
        own = graph.classes_of(graph.out_keys[producer])
        if len(own) != len(classes) or set(own.tolist()) != class_set or len(set(own.tolist())) != len(own):
            raise SurgeryError(
                f"cannot add neurons to {label(name)}: it is coupled with {label(producer)}, whose channels "
                "do not line up one to one with it (e.g. a concatenation feeding a residual addition); "
                "edit the layers that feed the concatenation instead."
            )
    planned: dict[str, np.ndarray] = {}
    fresh: set[int] = set()
    start = graph.key_count
    for producer in group:
        new = np.arange(start, start + count, dtype=np.int64)
        planned[producer] = np.concatenate([graph.out_keys[producer], new])
        fresh.update(new.tolist())
        start += count
    return planned, fresh


def finish_plan(
    kind: str,
    name: str,
    old: Graph,
    new: Graph,
    planned: dict[str, np.ndarray],
    removed: set[int],
    fresh: set[int],
    label: Label,
    order: list[str] | None = None,
) -> SurgeryPlan:
    """Turn the current and the planned trace into row/column sources for every touched layer.

    Raises:
        SurgeryError: the planned trace moved channels in a way the edit does not explain
            (a coupling the tracer cannot resolve), or new neurons would be pinned.
    """
    if new.executed != old.executed:
        raise SurgeryError(f"cannot {kind} {label(name)}: the edit changes which layers the forward pass runs.")
    fresh_arr = np.array(sorted(fresh), dtype=np.int64)
    if len(fresh_arr):
        fresh_roots = new.root[fresh_arr]
        reason = new.pin_reason(fresh_roots)
        old_roots = set(new.root[: old.key_count].tolist())
        if reason is not None or old_roots & set(fresh_roots.tolist()):
            raise SurgeryError(
                f"cannot {kind} {label(name)}: the new neurons would be coupled with existing ones "
                f"({reason or 'the layout does not line up'}); the coupling cannot be resolved safely."
            )
    removed_arr = np.array(sorted(removed), dtype=np.int64)
    edits = []
    names = list(dict.fromkeys([*(order or []), *old.out_keys, *old.bn_keys, *old.in_keys]))
    for member in names:
        row_source = col_source = None
        if member not in old.out_keys and member not in old.bn_keys and member not in old.in_keys:
            continue
        if member in planned:
            row_source = _source(kind, name, member, old.out_keys[member], planned[member], old, removed_arr, fresh_arr, label)
        elif member in old.bn_keys and not np.array_equal(old.bn_keys[member], new.bn_keys[member]):
            row_source = _source(kind, name, member, old.bn_keys[member], new.bn_keys[member], old, removed_arr, fresh_arr, label)
        if member in old.in_keys and not np.array_equal(old.in_keys[member], new.in_keys[member]):
            col_source = _source(kind, name, member, old.in_keys[member], new.in_keys[member], old, removed_arr, fresh_arr, label)
        if row_source is not None or col_source is not None:
            edits.append(ModuleEdit(member, row_source, col_source))
    return SurgeryPlan(kind, name, tuple(edits))


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
            f"cannot {kind} {label(name)}: after the edit the inputs of {label(member)} would be rearranged "
            "in a way the tracer cannot resolve (e.g. a fixed slice or split of channels); refusing instead of "
            "guessing."
        )
    return source
