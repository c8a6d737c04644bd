"""The walked logs of a store's experiments, kept while their head does not move.

Walking a log decodes every event (about 40 ms per 10^3 events); the UI asks for
the same log on every page and every poll. :class:`Logs` keeps each experiment's
walked log with the head (seq, hash) it was read at: an unchanged head costs one
small query; a head that moved forward past the same events reads and decodes
only the new events; anything else (a log cut or rewritten) is walked again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from weightslab.events.domain import RecordedEvent
from weightslab.history.log import Log, walk
from weightslab.history.store import ExperimentRow, Store

__all__ = ["Logs"]


@dataclass(frozen=True)
class _Kept:
    log: Log
    head: tuple[int, str | None]


class Logs:
    """Walked logs (``strict=False``: an event that does not decode is listed, not fatal), by experiment."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._kept: dict[int, _Kept] = {}
        self._lock = threading.Lock()

    def head(self, experiment_id: int) -> tuple[int, str | None]:
        """The experiment's head as anchored on its row: (seq, hash) of its latest event."""
        return self.store.head(experiment_id)

    def get(self, experiment: ExperimentRow) -> Log:
        """The experiment's log as of its head now."""
        eid = experiment.experiment_id
        head = self.head(eid)
        with self._lock:
            kept = self._kept.get(eid)
        if kept is not None and kept.head == head:
            return kept.log
        log = self._extended(kept, experiment, head[0]) if kept is not None else None
        if log is None:
            log = walk(self.store, experiment, strict=False)
        with self._lock:
            self._kept[eid] = _Kept(log, (log.last_seq, log.entries[-1].record.hash if log.entries else None))
        return log

    def _extended(self, kept: _Kept, experiment: ExperimentRow, head_seq: int) -> Log | None:
        """``kept``'s log plus the events after it, if the log still holds its last event unchanged."""
        last_seq, last_hash = kept.head
        if head_seq < last_seq or (last_seq and self.store.event_hash(experiment.experiment_id, last_seq) != last_hash):
            return None
        new = [RecordedEvent.from_row(r, strict=False) for r in self.store.events(experiment.experiment_id, last_seq + 1)]
        return Log.of(experiment.name, experiment.experiment_id, [e.record for e in kept.log.entries] + new)
