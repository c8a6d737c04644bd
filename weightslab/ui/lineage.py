"""The lineage graph of an experiment, and what a click on a checkpoint shows: its diff against its parent.

The tree is :meth:`weightslab.history.lineage.Lineage.of` the walked log, as the
nested JSON of a tree chart (the initial state at the root). The diff of a
checkpoint with a parent is :func:`weightslab.history.diff.diff_checkpoints`, what
``weightslab diff NAME PARENT ID`` prints; a checkpoint without one is compared
with the initial state the same way (events, tensors by hash, widths; no deny list
was recorded there).
"""

from __future__ import annotations

from typing import Any

from weightslab.errors import ConfigurationError
from weightslab.events.domain import ExperimentCreated
from weightslab.history.diff import diff_checkpoints
from weightslab.history.lineage import Lineage
from weightslab.history.log import Log
from weightslab.history.store import Store

__all__ = ["checkpoint_diff", "tree"]


def tree(lineage: Lineage) -> dict[str, Any]:
    """The checkpoint tree as ``{"name", "checkpoint", "age", "widths", "ops", "head", "children"}`` nodes.

    Example:
        >>> tree(Lineage.of(walk(store, "x0")))["children"][0]["checkpoint"]
        0
    """
    def node(cid: int) -> dict[str, Any]:
        n = lineage.nodes[cid]
        return {"name": f"checkpoint {cid}", "checkpoint": cid, "seq": n.event_seq, "age": n.model_age,
                "widths": list(n.architecture), "ops": n.ops[-6:], "head": cid == lineage.head,
                "children": [node(c) for c in n.children]}

    return {"name": "initial state", "checkpoint": None, "seq": None, "age": 0, "widths": [], "ops": [],
            "head": lineage.head is None, "children": [node(r) for r in lineage.roots()],
            "now": {"head": lineage.head, "ops_since_head": lineage.ops_since_head[-6:]}}


def checkpoint_diff(store: Store, log: Log, checkpoint: int) -> dict[str, Any]:
    """What separates checkpoint ``checkpoint`` from its parent (or from the initial state): the JSON of
    ``weightslab diff``, with ``"parent"`` set.

    Raises:
        ConfigurationError: no such checkpoint (the message lists those that exist).
    """
    dumps = log.dumps()
    entry = dumps.get(checkpoint)
    if entry is None:
        shown = ", ".join(str(c) for c in sorted(dumps)) or "none yet"
        raise ConfigurationError(f"checkpoint {checkpoint!r} does not exist in experiment {log.name!r}; "
                                 f"its checkpoints: {shown}")
    parent = getattr(entry.event, "parent_id", None)
    if parent is not None:
        return {**diff_checkpoints(store, log.name, parent, checkpoint).to_dict(), "parent": parent}
    created = next((e for e in log if isinstance(e.event, ExperimentCreated)), None)
    mine = store.read_manifest(entry.event.manifest)  # type: ignore[attr-defined]
    initial = store.read_manifest(created.event.initial) if created is not None else None  # type: ignore[attr-defined]
    ta, tb = (initial.tensors if initial else {}), mine.tensors
    events = log.segments().get(checkpoint, [])
    return {
        "experiment": log.name, "a": None, "b": checkpoint, "ancestor": None, "parent": None,
        "events_to_a": [], "events_to_b": [{"seq": e.seq, "kind": e.kind, "summary": e.event.summary()}
                                           for e in events],
        "tensors": {"added": sorted(set(tb) - set(ta)), "removed": sorted(set(ta) - set(tb)),
                    "changed": sorted(k for k in set(ta) & set(tb) if ta[k] != tb[k]),
                    "unchanged": sum(1 for k in set(ta) & set(tb) if ta[k] == tb[k])},
        "architecture": {"a": list(initial.meta.get("architecture", [])) if initial else [],
                         "b": list(mine.meta.get("architecture", []))},
        "ledger": [],
    }
