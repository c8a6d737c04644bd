"""The neurons page: per layer, trigger rates over the recorded history, flags, and widths over time.

The history of the trigger counters is what the store keeps of it: a Parquet
snapshot of ``neuron_stats`` at every dump (and at every ``exp.snapshot()``),
plus the table itself, which holds the counters as of the last event. So the
heatmap has one column per snapshot and a last column *now*; a row per neuron
index (after a prune the indices above it shift down, as in the model). The
widths over time come from the log: the initial manifest, then every add and
prune (their recorded widths), every dump and every load (their checkpoint's).

A neuron is *dead* when it saw samples and never triggered, *weak* when its
rate is below a quarter of the median rate of its layer's live neurons: the rule
of ``exp.display_stats()`` (``weightslab/surgery/report.py``), on the train
counters, or the eval ones where the layer never trained.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    ExperimentCreated,
    NeuronsAdded,
    NeuronsPruned,
)
from weightslab.history.log import Log
from weightslab.history.store import Store
from weightslab.ui.memo import Memo

__all__ = ["WEAK_FRACTION", "LayerView", "flags", "neuron_layers", "widths_over_time"]

WEAK_FRACTION = 0.25  # as weightslab.surgery.report.WEAK_FRACTION (that module needs torch)
TABLE = "neuron_stats"
_SNAPSHOTS = Memo(ttl=3600.0, size=512)  # a snapshot never changes: keep the decoded frames
_CURRENT = ("SELECT layer_index, neuron_index, split, layer_name, trigger_count, seen_samples "
            "FROM neuron_stats WHERE experiment_id = :e ORDER BY layer_index, split, neuron_index")
_LIST = ("SELECT snapshot_id, event_seq FROM snapshots WHERE experiment_id = :e AND table_name = :t "
         "ORDER BY event_seq, snapshot_id")


@dataclass
class LayerView:
    """One layer: its heatmap per split (``[[column, neuron, rate], ...]``), its flags and widths."""

    index: int
    name: str
    width: int  # neurons now
    columns: list[str]  # "seq 66 (checkpoint 0)", ..., "now (seq 97)"
    rows: int  # neuron indices shown: the widest the layer has been in the history shown
    heat: dict[str, list[list[Any]]] = field(default_factory=dict)  # split → cells
    flagged: list[dict[str, Any]] = field(default_factory=list)  # dead and weak neurons now

    @property
    def tracked(self) -> bool:
        """Whether any sample went through the layer's tracking (the output layer's never does)."""
        return any(cell[2] is not None for cells in self.heat.values() for cell in cells)


def flags(triggers: list[int], seen: list[int]) -> list[str]:
    """Per neuron: "dead", "weak" or "" (see the module docstring).

    Example:
        >>> flags([0, 50, 5, 60], [100, 100, 100, 100])
        ['dead', '', 'weak', '']
    """
    live = [t / s for t, s in zip(triggers, seen) if s > 0 and t > 0]
    median = statistics.median(live) if live else 0.0
    out = []
    for t, s in zip(triggers, seen):
        out.append("" if s == 0 else "dead" if t == 0 else "weak" if t / s < WEAK_FRACTION * median else "")
    return out


def neuron_layers(store: Store, log: Log, max_columns: int = 60) -> list[LayerView]:
    """The layers of the experiment of ``log``, each with its history (the latest ``max_columns``
    snapshots, and now)."""
    eid = log.experiment_id
    listed = store.query(_LIST, {"e": eid, "t": TABLE}).tail(max_columns)
    dumps = {e.seq: e.event.checkpoint_id for e in log if isinstance(e.event, CheckpointDumped)}
    frames: list[pd.DataFrame] = []
    labels: list[str] = []
    for r in listed.itertuples():
        sid, seq = int(r.snapshot_id), int(r.event_seq)
        frames.append(_SNAPSHOTS.get((store.describe(), sid), partial(store.read_snapshot, sid)))
        labels.append(f"seq {seq}" + (f" (checkpoint {dumps[seq]})" if seq in dumps else ""))
    frames.append(store.query(_CURRENT, {"e": eid}))
    labels.append(f"now (seq {log.last_seq})")
    current = frames[-1]
    layers = []
    for index in sorted(set(current["layer_index"].astype(int))):
        mine = current[current["layer_index"] == index]
        width = int(mine["neuron_index"].max()) + 1 if len(mine) else 0
        view = LayerView(index, str(mine["layer_name"].iloc[0]) if len(mine) else f"layer {index}", width,
                         labels, 0)
        for split in ("train", "eval"):
            cells = []
            for column, frame in enumerate(frames):
                rows = frame[(frame["layer_index"] == index) & (frame["split"] == split)]
                for n, t, s in zip(rows["neuron_index"], rows["trigger_count"], rows["seen_samples"]):
                    view.rows = max(view.rows, int(n) + 1)
                    cells.append([column, int(n), round(int(t) / int(s), 4) if int(s) else None])
            view.heat[split] = cells
        view.flagged = _flagged(mine)
        layers.append(view)
    return layers


def _flagged(rows: pd.DataFrame) -> list[dict[str, Any]]:
    by_split = {s: rows[rows["split"] == s].sort_values("neuron_index") for s in ("train", "eval")}
    split = "train" if by_split["train"]["seen_samples"].astype(int).any() else "eval"
    chosen = by_split[split]
    triggers, seen = chosen["trigger_count"].astype(int).tolist(), chosen["seen_samples"].astype(int).tolist()
    return [{"neuron": int(n), "flag": f, "split": split, "rate": t / s if s else None, "triggers": t, "seen": s}
            for n, f, t, s in zip(chosen["neuron_index"], flags(triggers, seen), triggers, seen) if f]


def widths_over_time(store: Store, log: Log) -> dict[str, Any]:
    """``{"layers": n, "points": [[seq, [w0, w1, ...]], ...]}``: the widths after each event that set them."""
    points: list[list[Any]] = []
    by_checkpoint: dict[int, list[int]] = {}
    for e in log:
        event = e.event
        widths: list[int] | None = None
        if isinstance(event, ExperimentCreated):
            widths = _initial_widths(store, event.initial)
        elif isinstance(event, NeuronsAdded | NeuronsPruned) and event.widths:
            widths = list(event.widths)
        elif isinstance(event, CheckpointDumped) and event.architecture:
            widths = by_checkpoint[event.checkpoint_id] = list(event.architecture)
        elif isinstance(event, CheckpointLoaded):
            widths = by_checkpoint.get(event.checkpoint_id)
        if widths and (not points or points[-1][1] != widths):
            points.append([e.seq, widths])
    return {"layers": max((len(w) for _, w in points), default=0), "points": points, "last_seq": log.last_seq}


def _initial_widths(store: Store, manifest: str) -> list[int] | None:
    try:
        return list(store.read_manifest(manifest).meta.get("architecture", [])) or None
    except Exception:  # noqa: BLE001 - a missing manifest shows as a gap here; audit names it
        return None
