"""Diff two checkpoints: what separates them, and what it changed.

Between checkpoints A and B of one experiment:

- the **events** on the way from their common ancestor (walking parent links
  of the ``checkpoints`` table) down to A and down to B;
- the **tensors** whose blobs differ (added, removed, changed names, from the
  two manifests: a tensor's blob hash is its content);
- the **architecture** (neurons per layer);
- the **ledger**: per split, the samples denied in B but not in A and the
  samples allowed in B but denied in A (from ``ledger/<split>/deny_listed``;
  the masks are decoded only when their hashes differ).

No torch: tensors are compared by hash and the deny masks are read with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from weightslab.errors import ConfigurationError, IntegrityError
from weightslab.history.blobs import check_hash
from weightslab.history.log import LogEntry, walk
from weightslab.history.store import Store
from weightslab.history.tensorcodec import parse_tensor

__all__ = ["CheckpointDiff", "LedgerChange", "decode_numpy", "diff_checkpoints"]

_SHOWN_IDS = 20  # sample ids printed per line in text output (JSON has them all)


@dataclass(frozen=True)
class LedgerChange:
    """Deny-list change of one split from checkpoint A to checkpoint B."""

    split: str
    newly_denied: list[int]
    newly_allowed: list[int]
    denied_a: int
    denied_b: int


@dataclass(frozen=True)
class CheckpointDiff:
    """What separates checkpoint ``a`` from checkpoint ``b`` (see the module docstring)."""

    experiment: str
    a: int
    b: int
    ancestor: int | None  # None: they meet only at the initial state
    events_to_a: list[LogEntry]
    events_to_b: list[LogEntry]
    tensors_added: list[str]  # in B, not in A
    tensors_removed: list[str]  # in A, not in B
    tensors_changed: list[str]  # in both, different content
    tensors_unchanged: int
    architecture_a: list[int]
    architecture_b: list[int]
    ledger: list[LedgerChange]

    def render_text(self) -> str:
        base = "the initial state" if self.ancestor is None else f"checkpoint {self.ancestor}"
        lines = [f"Experiment {self.experiment!r}: checkpoint {self.a} → checkpoint {self.b} "
                 f"(common ancestor: {base})"]
        for target, evs in ((self.a, self.events_to_a), (self.b, self.events_to_b)):
            if target == self.ancestor:
                continue
            lines.append(f"Events from {base} to checkpoint {target}: {len(evs)}")
            lines += [f"  seq {e.seq:>5}  {e.kind:<22} {e.event.summary()}" for e in evs]
        if self.architecture_a == self.architecture_b:
            lines.append(f"Architecture: unchanged {self.architecture_a}")
        else:
            lines.append(f"Architecture: {self.architecture_a} → {self.architecture_b}")
            lines += [f"  layer {i}: {wa} → {wb} neurons ({wb - wa:+d})" for i, (wa, wb) in
                      enumerate(_pairs(self.architecture_a, self.architecture_b)) if wa != wb]
        lines.append(f"Tensors: {len(self.tensors_changed)} changed, {len(self.tensors_added)} added, "
                     f"{len(self.tensors_removed)} removed, {self.tensors_unchanged} unchanged")
        for label, names in (("changed", self.tensors_changed), ("added", self.tensors_added),
                             ("removed", self.tensors_removed)):
            lines += [f"  {label:<8} {n}" for n in names]
        lines.append("Ledger (deny list):" if self.ledger else "Ledger: no deny lists in these checkpoints")
        for c in self.ledger:
            if not c.newly_denied and not c.newly_allowed:
                lines.append(f"  {c.split}: unchanged ({c.denied_a} denied)")
                continue
            lines.append(f"  {c.split}: {len(c.newly_denied)} newly denied{_ids(c.newly_denied)}, "
                         f"{len(c.newly_allowed)} newly allowed{_ids(c.newly_allowed)} "
                         f"(denied: {c.denied_a} → {c.denied_b})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def evs(rows: list[LogEntry]) -> list[dict[str, Any]]:
            return [{"seq": e.seq, "kind": e.kind, "summary": e.event.summary()} for e in rows]

        return {
            "experiment": self.experiment, "a": self.a, "b": self.b, "ancestor": self.ancestor,
            "events_to_a": evs(self.events_to_a), "events_to_b": evs(self.events_to_b),
            "tensors": {"added": self.tensors_added, "removed": self.tensors_removed,
                        "changed": self.tensors_changed, "unchanged": self.tensors_unchanged},
            "architecture": {"a": self.architecture_a, "b": self.architecture_b},
            "ledger": [vars(c) for c in self.ledger],
        }


def diff_checkpoints(store: Store, name: str, a: int, b: int) -> CheckpointDiff:
    """Compare checkpoints ``a`` and ``b`` of experiment ``name`` (nothing is written).

    Raises:
        UnknownExperimentError: no such experiment.
        ConfigurationError: ``a`` or ``b`` is not a checkpoint of it (the message lists those that exist).
        BlobNotFoundError / IntegrityError: a manifest or deny mask is missing or damaged (named).

    Example:
        >>> print(diff_checkpoints(Store.open("./store"), "x0", 1, 2).render_text())
    """
    exp = store.get_experiment(name)
    rows = {r.checkpoint_id: r for r in store.checkpoints(exp.experiment_id)}
    for cid in (a, b):
        if isinstance(cid, bool) or not isinstance(cid, int) or cid not in rows:
            shown = ", ".join(str(i) for i in sorted(rows)) or "none (exp.dump() creates checkpoint 0)"
            raise ConfigurationError(f"checkpoint {cid!r} does not exist in experiment {name!r}; "
                                     f"its checkpoints: {shown}")
    ancestor = _common_ancestor(rows, a, b)
    segments = walk(store, exp).segments()
    man_a, man_b = store.read_manifest(rows[a].manifest_hash), store.read_manifest(rows[b].manifest_hash)
    ta, tb = man_a.tensors, man_b.tensors
    return CheckpointDiff(
        experiment=name, a=a, b=b, ancestor=ancestor,
        events_to_a=_path_events(rows, segments, ancestor, a),
        events_to_b=_path_events(rows, segments, ancestor, b),
        tensors_added=sorted(set(tb) - set(ta)), tensors_removed=sorted(set(ta) - set(tb)),
        tensors_changed=sorted(k for k in set(ta) & set(tb) if ta[k] != tb[k]),
        tensors_unchanged=sum(1 for k in set(ta) & set(tb) if ta[k] == tb[k]),
        architecture_a=list(man_a.meta.get("architecture", [])),
        architecture_b=list(man_b.meta.get("architecture", [])),
        ledger=_ledger_changes(store, ta, tb),
    )


def _ancestry(rows: dict[int, Any], cid: int) -> list[int]:
    """``cid``, its parent, its grandparent, ... up to a root."""
    chain: list[int] = []
    cur: int | None = cid
    while cur is not None and cur in rows and cur not in chain:  # a cycle would be damage; stop
        chain.append(cur)
        cur = rows[cur].parent_id
    return chain


def _common_ancestor(rows: dict[int, Any], a: int, b: int) -> int | None:
    up_b = set(_ancestry(rows, b))
    return next((c for c in _ancestry(rows, a) if c in up_b), None)


def _path_events(rows: dict[int, Any], segments: dict[int, list[LogEntry]], ancestor: int | None,
                 target: int) -> list[LogEntry]:
    path = _ancestry(rows, target)
    if ancestor is not None:
        path = path[: path.index(ancestor)]
    out: list[LogEntry] = []
    for cid in reversed(path):
        out += segments.get(cid, [])
    return out


def _ledger_changes(store: Store, ta: dict[str, str], tb: dict[str, str]) -> list[LedgerChange]:
    out = []
    masks = sorted({n for n in (*ta, *tb) if n.startswith("ledger/") and n.endswith("/deny_listed")})
    for mask in masks:
        split = mask.split("/")[1]
        a = _mask(store, ta.get(mask))
        b = a if ta.get(mask) == tb.get(mask) else _mask(store, tb.get(mask))
        n = max(len(a), len(b))
        a, b = np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))
        out.append(LedgerChange(split, np.flatnonzero(b & ~a).tolist(), np.flatnonzero(a & ~b).tolist(),
                                int(a.sum()), int(b.sum())))
    return out


def _mask(store: Store, digest: str | None) -> np.ndarray:
    if digest is None:
        return np.zeros(0, dtype=bool)
    return decode_numpy(store.blobs.get(check_hash(digest))).astype(bool).reshape(-1)


def decode_numpy(blob: bytes) -> np.ndarray:
    """Parse WLT1 tensor bytes into a numpy array, without torch (bfloat16 is refused).

    Raises:
        IntegrityError: malformed bytes, or a length that does not match dtype × shape.
    """
    dtype_name, shape, data = parse_tensor(blob)
    if dtype_name == "bfloat16":
        raise IntegrityError("a bfloat16 tensor cannot be read without torch")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IntegrityError(f"tensor data is {len(data)} bytes, expected {expected} for {dtype_name}{shape}; "
                             "the blob is truncated or damaged")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape)


def _pairs(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0, b[i] if i < len(b) else 0) for i in range(n)]


def _ids(ids: list[int]) -> str:
    if not ids:
        return ""
    shown = ", ".join(str(i) for i in ids[:_SHOWN_IDS])
    return " {" + shown + (f", … +{len(ids) - _SHOWN_IDS}" if len(ids) > _SHOWN_IDS else "") + "}"
