"""Lineage: the checkpoint tree, derived from the event log.

Walking the events in order with a "head" (the checkpoint the live state
descends from): a ``dump`` makes a child of the head out of the operations
since the head was set; a ``load`` (or ``resume``) moves the head. The same
tree prints as text (``print(exp.chkpt_manager)``), Graphviz DOT or Mermaid.
No torch needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    ExperimentResumed,
    StepsTrained,
)
from weightslab.history.log import Log, LogEntry

__all__ = ["CheckpointNode", "Lineage"]

_MAX_OPS = 12  # operations listed under a checkpoint (the latest ones)


def _compact(ops: list[LogEntry]) -> list[str]:
    """Summaries, with consecutive training calls merged into one line."""
    out: list[str] = []
    i = 0
    while i < len(ops):
        if isinstance(ops[i].event, StepsTrained):
            j = i
            while j < len(ops) and isinstance(ops[j].event, StepsTrained):
                j += 1
            calls: list[Any] = [e.event for e in ops[i:j]]
            steps = sum(c.steps for c in calls)
            many = f" in {j - i} calls" if j - i > 1 else ""
            out.append(f"train {steps} steps{many} (age {calls[0].age_before:,} → {calls[-1].age_after:,})")
            i = j
        else:
            out.append(ops[i].event.summary())
            i += 1
    return out


@dataclass
class CheckpointNode:
    checkpoint_id: int
    parent_id: int | None
    event_seq: int
    model_age: int
    manifest_hash: str
    architecture: list[int]
    ops: list[str] = field(default_factory=list)
    children: list[int] = field(default_factory=list)


@dataclass
class Lineage:
    name: str
    nodes: dict[int, CheckpointNode]
    head: int | None  # checkpoint the live state descends from
    ops_since_head: list[str]
    last_seq: int

    def roots(self) -> list[int]:
        return [cid for cid, n in sorted(self.nodes.items()) if n.parent_id is None]

    # -- text --------------------------------------------------------------------
    def render_text(self) -> str:
        lines = [f"Checkpoints of experiment {self.name!r}: {len(self.nodes)} "
                 f"(event log at seq {self.last_seq})"]
        if not self.nodes:
            lines.append("  (none yet: exp.dump() creates checkpoint 0)")
        for i, root in enumerate(self.roots()):
            self._render_node(root, "", i == len(self.roots()) - 1, lines, top=True)
        where = "the initial state" if self.head is None else f"checkpoint {self.head}"
        if self.ops_since_head:
            lines.append(f"Now: after {where}, {len(self.ops_since_head)} more operation(s):")
            lines.extend(f"    · {op}" for op in self.ops_since_head[-_MAX_OPS:])
        else:
            lines.append(f"Now: at {where}")
        return "\n".join(lines)

    def _render_node(self, cid: int, prefix: str, last: bool, lines: list[str], top: bool = False) -> None:
        n = self.nodes[cid]
        branch = "" if top else ("└── " if last else "├── ")
        here = "  ◀ now" if cid == self.head and not self.ops_since_head else ""
        arch = "[" + ", ".join(str(w) for w in n.architecture) + "]"
        lines.append(f"{prefix}{branch}● checkpoint {cid}  (parent {n.parent_id if n.parent_id is not None else '—'}, "
                     f"seq {n.event_seq}, age {n.model_age:,}, neurons {arch}, {n.manifest_hash[:10]}){here}")
        child_prefix = prefix + ("" if top else ("    " if last else "│   "))
        bar = "│" if n.children else " "
        shown = n.ops[-_MAX_OPS:]
        if len(n.ops) > _MAX_OPS:
            lines.append(f"{child_prefix}{bar}   … {len(n.ops) - _MAX_OPS} earlier operations")
        for op in shown:
            lines.append(f"{child_prefix}{bar}   · {op}")
        for j, child in enumerate(n.children):
            self._render_node(child, child_prefix, j == len(n.children) - 1, lines)

    # -- pictures ------------------------------------------------------------------
    def to_dot(self) -> str:
        out = [f'digraph "{self.name}" {{', "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
        out.append('  init [label="initial state", shape=ellipse];')
        for cid, n in sorted(self.nodes.items()):
            label = f"checkpoint {cid}\\nseq {n.event_seq} · age {n.model_age}\\n{n.manifest_hash[:10]}"
            style = ", style=bold" if cid == self.head else ""
            out.append(f'  c{cid} [label="{label}"{style}];')
            src = "init" if n.parent_id is None else f"c{n.parent_id}"
            ops = "\\n".join(o.replace('"', "'") for o in n.ops[-4:])
            out.append(f'  {src} -> c{cid} [label="{ops}"];')
        out.append("}")
        return "\n".join(out)

    def to_mermaid(self) -> str:
        out = ["graph LR", '  init(["initial state"])']
        for cid, n in sorted(self.nodes.items()):
            out.append(f'  c{cid}["checkpoint {cid}<br/>seq {n.event_seq} · age {n.model_age}"]')
            src = "init" if n.parent_id is None else f"c{n.parent_id}"
            ops = "; ".join(n.ops[-3:]).replace('"', "'").replace("|", "/")
            out.append(f'  {src} -->|"{ops}"| c{cid}' if ops else f"  {src} --> c{cid}")
        return "\n".join(out)

    @classmethod
    def of(cls, log: Log) -> Lineage:
        """Build the tree from a walked log (:func:`weightslab.history.log.walk`)."""
        nodes: dict[int, CheckpointNode] = {}
        pending: list[LogEntry] = []
        for e in log:
            event = e.event
            if isinstance(event, CheckpointDumped):
                cid, parent = event.checkpoint_id, event.parent_id
                nodes[cid] = CheckpointNode(cid, parent, e.seq, event.model_age, event.manifest,
                                            list(event.architecture), _compact(pending))
                if parent is not None and parent in nodes:
                    nodes[parent].children.append(cid)
                pending = []
            elif isinstance(event, CheckpointLoaded):
                pending = []
            elif isinstance(event, ExperimentResumed):
                # a resume restores its base state and re-applies the events after it: the operations
                # pending since the head stay pending, unless some could not be restored
                if event.not_restored:
                    pending = [e]
            elif event.OPERATION:
                pending.append(e)
        return cls(log.name, nodes, log.head, _compact(pending), log.last_seq)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "head": self.head, "last_seq": self.last_seq,
            "ops_since_head": self.ops_since_head,
            "checkpoints": [vars(n) | {"children": list(n.children)} for _, n in sorted(self.nodes.items())],
        }
