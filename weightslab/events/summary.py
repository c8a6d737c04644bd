"""One-line, human summaries of events (``prune layer 0 {0, 2, 4}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["summarize"]


def _ids(values: Any, limit: int = 8) -> str:
    vals = list(values or [])
    shown = ", ".join(str(v) for v in vals[:limit])
    return "{" + shown + (f", … +{len(vals) - limit}" if len(vals) > limit else "") + "}"


def _n(x: Any) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) else str(x)


def summarize(kind: str, payload: Mapping[str, Any]) -> str:
    """A short description of an event for listings and the lineage tree."""
    p = payload
    args = p.get("args", p)
    if kind == "train":
        return f"train {p.get('steps')} steps (age {_n(p.get('age_before'))} → {_n(p.get('age_after'))})"
    if kind == "eval":
        what = "full" if p.get("full") else f"{p.get('steps')} steps"
        loss, acc = p.get("loss"), p.get("accuracy")
        tail = f": loss {loss:.4f}, accuracy {acc:.2%}" if isinstance(loss, float) and isinstance(acc, float) else ""
        return f"eval {what}{tail}"
    if kind == "add_neurons":
        return f"add {args.get('neuron_count')} neurons to layer {args.get('layer_index')}"
    if kind == "prune":
        return f"prune layer {args.get('layer_index')} {_ids(args.get('neuron_indices'))}"
    if kind == "reinit_neurons":
        r = args.get("perturbation_ratio")
        how = f" (perturbation {r})" if r is not None else ""
        return f"reinit layer {args.get('layer_index')} {_ids(args.get('neuron_indices'))}{how}"
    if kind == "set_neuron_lr":
        return f"lr ×{args.get('lr')} for layer {args.get('layer_index')} neurons {_ids(args.get('neuron_indices'))}"
    if kind == "set_incoming_neuron_lr":
        return (f"lr ×{args.get('lr')} for layer {args.get('layer_index')} incoming "
                f"{_ids(args.get('neuron_indices'))}")
    if kind == "freeze":
        return f"freeze layers 0..{args.get('up_to_index')}"
    if kind == "unfreeze":
        return f"unfreeze layers {args.get('from_index')}.."
    if kind in ("deny", "allow"):
        n = p.get("result", {}).get("changed", p.get("changed"))
        split = p.get("split", "train")
        mode = args.get("mode", "")
        return f"{kind} {n} {split} samples" + (f" ({mode})" if mode else "")
    if kind == "dump":
        return f"dump checkpoint {p.get('checkpoint_id')}"
    if kind == "load":
        return f"load checkpoint {p.get('checkpoint_id')}"
    if kind == "resume":
        cid = p.get("checkpoint_id")
        return "resume" + (f" from checkpoint {cid}" if cid is not None else " from the initial state")
    if kind == "create":
        return f"create experiment {p.get('name', '')!s}".rstrip()
    if kind == "snapshot":
        return "snapshot statistics"
    return kind
