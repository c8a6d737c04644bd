"""Branches: the stretches of a log along which the model's age only grows.

A *branch* starts where the live state is set from somewhere: the creation, a
dump (the work after it heads for the next checkpoint), a load, or a resume that
could not restore every event. It is named for the checkpoint it heads for and
the one it starts from, as ``print(exp.chkpt_manager)`` draws them:

- ``c0``: from the initial state towards checkpoint 0;
- ``c1-from-c0``: from checkpoint 0 towards checkpoint 1 (the next dump's id);
- ``c2-from-c0~2``: the second branch of that name (checkpoint 0 loaded again
  before checkpoint 2 was dumped).

A dump belongs to the branch it ends, a load or resume to the branch it starts.
Within one branch the model age never goes back, so each branch is one curve in
the UI and one TensorBoard run (``weightslab/experiment/tensorboard.py``).
Pure: no torch, no SQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    DomainEvent,
    ExperimentCreated,
    ExperimentResumed,
)
from weightslab.history.log import LogEntry

__all__ = ["BranchTracker", "branch_of_entries"]


@dataclass
class BranchTracker:
    """Folds events one by one into the branch each belongs to (see the module docstring).

    A branch gets its name when its first event joins it, so a dump followed at once by a load
    leaves no empty branch behind.

    Example:
        >>> t = BranchTracker()
        >>> [t.advance(e) for e in (ExperimentCreated(name="x", initial="m"),
        ...                         CheckpointDumped(checkpoint_id=0, manifest="m"),
        ...                         CheckpointLoaded(checkpoint_id=0, manifest="m"),
        ...                         CheckpointLoaded(checkpoint_id=0, manifest="m"))]
        ['c0', 'c0', 'c1-from-c0', 'c1-from-c0~2']
    """

    head: int | None = None  # the checkpoint the live state descends from (None: the initial state)
    next_id: int = 0  # the id the next dump will get
    current: str | None = None  # the branch the next event joins (None: a new one, named when joined)
    used: Counter[str] = field(default_factory=Counter)  # how many branches got each name

    def advance(self, event: DomainEvent) -> str:
        """The branch ``event`` belongs to; starts a new one where the event sets the state."""
        if isinstance(event, ExperimentCreated):
            self.head, self.next_id = None, 0
            return self._join(new=True)
        if isinstance(event, CheckpointLoaded):
            self.head = event.checkpoint_id
            return self._join(new=True)
        if isinstance(event, ExperimentResumed) and (event.not_restored or event.checkpoint_id != self.head):
            self.head = event.checkpoint_id  # the state went back: what follows is another branch
            return self._join(new=True)
        branch = self._join(new=False)
        if isinstance(event, CheckpointDumped):
            self.head, self.next_id = event.checkpoint_id, max(self.next_id, event.checkpoint_id + 1)
            self.current = None  # the work after a dump heads for the next checkpoint
        return branch

    def branch(self) -> str:
        """The branch the next event joins (a new one is named here)."""
        return self._join(new=False)

    def _join(self, *, new: bool) -> str:
        if new or self.current is None:
            base = f"c{self.next_id}" if self.head is None else f"c{self.next_id}-from-c{self.head}"
            self.used[base] += 1
            self.current = base if self.used[base] == 1 else f"{base}~{self.used[base]}"
        return self.current


def branch_of_entries(entries: Iterable[LogEntry]) -> list[str]:
    """The branch of each entry of a walked log, in order.

    Example:
        >>> branch_of_entries(walk(store, "x0"))[:3]
        ['c0', 'c0', 'c0']
    """
    tracker = BranchTracker()
    return [tracker.advance(e.event) for e in entries]
