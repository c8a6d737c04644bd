"""The one pass over an experiment's log that every reader shares.

:func:`walk` reads an experiment's events once, decodes each into its typed
class (:mod:`weightslab.events.domain`) and marks, after every event, the
checkpoint the live state descends from (its *head*). On the result
(:class:`Log`) live the rules that readers used to re-implement:

- **restorable states** (:meth:`Log.plan`): a state can be rebuilt from the last
  event at or before a seq that names the whole state: the creation (its initial
  manifest), a dump (its checkpoint), a load (the checkpoint it restored), or a
  resume (its base manifest, on which it re-executed the events it lists); the
  events after that one are then re-executed;
- **segments** (:meth:`Log.segments`): the events that lead from a checkpoint's
  parent state to the checkpoint (what ``diff`` shows);
- **operations since the head** (:attr:`LogEntry.head`), for the lineage tree.

Replay, reopening, lineage, diff, audit and the event listings all read the log
through here. No torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightslab.errors import ConfigurationError, IntegrityError, ReplayError
from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    DomainEvent,
    ExperimentCreated,
    ExperimentResumed,
    RecordedEvent,
)

if TYPE_CHECKING:
    from weightslab.history.direct import DirectReader
    from weightslab.history.rows import ExperimentRow
    from weightslab.history.store import Store

__all__ = ["Log", "LogEntry", "RestorePlan", "walk"]


@dataclass(frozen=True)
class LogEntry:
    """One event of the log, typed, with the checkpoint the state after it descends from and the
    environment the event ran in (that of the latest creation or resume before it; None: not recorded)."""

    record: RecordedEvent
    head: int | None  # None: the initial state
    environment: Mapping[str, Any] | None = None

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def event(self) -> DomainEvent:
        return self.record.event

    @property
    def state_hash(self) -> str | None:
        return self.record.state_hash


@dataclass(frozen=True)
class RestorePlan:
    """How to rebuild the state right after a target event.

    Restore ``manifest``, re-execute ``redo`` (the events a resume re-executed on top
    of its base manifest; empty otherwise): that is the state after ``anchor``. Then
    re-execute ``then``, the events after the anchor up to the target.
    """

    anchor: LogEntry
    manifest: str
    checkpoint_id: int | None
    redo: tuple[LogEntry, ...]
    then: tuple[LogEntry, ...]

    @property
    def target(self) -> int:
        return self.then[-1].seq if self.then else self.anchor.seq

    @property
    def manifest_seq(self) -> int:
        """The seq of the event that recorded ``manifest`` (a resume's base, else the anchor itself)."""
        event = self.anchor.event
        if isinstance(event, ExperimentResumed) and event.base_seq is not None:
            return event.base_seq
        return self.anchor.seq


def _anchor_of(event: DomainEvent) -> tuple[str, int | None] | None:
    """(manifest, checkpoint id) if ``event`` names the whole state after it, else None."""
    if isinstance(event, ExperimentCreated):
        return event.initial, None
    if isinstance(event, CheckpointDumped | CheckpointLoaded):
        return event.manifest, event.checkpoint_id
    if isinstance(event, ExperimentResumed):
        return event.manifest, event.checkpoint_id
    return None


class Log:
    """An experiment's events, typed and walked once (see the module docstring)."""

    def __init__(self, name: str, experiment_id: int, entries: Sequence[LogEntry]) -> None:
        self.name = name
        self.experiment_id = experiment_id
        self.entries: tuple[LogEntry, ...] = tuple(entries)
        self._by_seq = {e.seq: e for e in self.entries}

    @classmethod
    def of(cls, name: str, experiment_id: int, records: Sequence[RecordedEvent]) -> Log:
        """Mark each record's head (a dump or load moves it to its checkpoint, a resume to its base's) and
        environment (set by the creation, and by each resume for the events after it)."""
        entries: list[LogEntry] = []
        head: int | None = None
        environment: Mapping[str, Any] | None = None
        for record in records:
            event = record.event
            if isinstance(event, ExperimentCreated):
                head, environment = None, event.environment
            elif isinstance(event, CheckpointDumped | CheckpointLoaded | ExperimentResumed):
                head = event.checkpoint_id
            entries.append(LogEntry(record, head, environment))
            if isinstance(event, ExperimentResumed) and event.environment is not None:
                environment = event.environment  # the events after a resume ran in its environment
        return cls(name, experiment_id, entries)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0

    @property
    def head(self) -> int | None:
        """The checkpoint the latest state descends from (None: the initial state)."""
        return self.entries[-1].head if self.entries else None

    def entry(self, seq: int) -> LogEntry:
        """The entry of ``seq``.

        Raises:
            ConfigurationError: no such seq (the message gives the log's range).
        """
        found = self._by_seq.get(seq)
        if found is None:
            raise ConfigurationError(f"seq {seq!r} is not in the log of {self.name!r} (1..{self.last_seq})")
        return found

    def dumps(self) -> dict[int, LogEntry]:
        """Each checkpoint id → its dump entry."""
        return {e.event.checkpoint_id: e for e in self.entries if isinstance(e.event, CheckpointDumped)}

    # -- restorable states -------------------------------------------------------------------------------
    def plan(self, target: int | None = None, *, from_start: bool = False) -> RestorePlan:
        """How to rebuild the state right after event ``target`` (default: the last).

        From the nearest restorable state at or before it, or, ``from_start``, from the creation.

        Raises:
            ReplayError: ``target`` outside the log (the message gives the range).
            IntegrityError: the log has no creation event, or a resume names a seq it does not hold.
        """
        last = self.last_seq
        seq = last if target is None else target
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= last:
            raise ReplayError(f"seq {target!r} is outside the event log of {self.name!r} (1..{last})")
        upto = [e for e in self.entries if e.seq <= seq]
        index = None
        for i in range(len(upto) - 1, -1, -1):
            if _anchor_of(upto[i].event) is not None and (not from_start or isinstance(upto[i].event,
                                                                                      ExperimentCreated)):
                index = i
                break
        if index is None:
            raise IntegrityError(f"the log of {self.name!r} has no creation event; the store is damaged")
        anchor = upto[index]
        manifest, checkpoint_id = _anchor_of(anchor.event) or ("", None)
        return RestorePlan(anchor, manifest, checkpoint_id, self.redo_of(anchor), tuple(upto[index + 1:]))

    def redo_of(self, entry: LogEntry) -> tuple[LogEntry, ...]:
        """The events a resume re-executed on its base manifest (nothing for other events).

        Raises:
            IntegrityError: the resume names a seq the log does not hold.
        """
        event = entry.event
        if not isinstance(event, ExperimentResumed):
            return ()
        missing = [s for s in event.replayed if s not in self._by_seq]
        if missing:
            raise IntegrityError(f"the resume at seq {entry.seq} of {self.name!r} names events {missing} that the "
                                 "log does not hold; the store is damaged")
        return tuple(self._by_seq[s] for s in event.replayed)

    def checkpoint_problems(self, rows: Sequence[Any]) -> list[str]:
        """Where the ``checkpoints`` table (``rows``: checkpoint_id, parent_id, event_seq, manifest_hash)
        disagrees with the dump events: it is what ``load`` reads, and the hash chain does not cover it."""
        by_id = {r.checkpoint_id: r for r in rows}
        dumps = self.dumps()
        problems = []
        for cid, e in dumps.items():
            event, row = e.event, by_id.get(cid)
            assert isinstance(event, CheckpointDumped)
            if row is None:
                problems.append(f"checkpoint {cid} (seq {e.seq}): the dump event has no row in the checkpoints table")
            elif (row.manifest_hash, row.event_seq, row.parent_id) != (event.manifest, e.seq, event.parent_id):
                problems.append(
                    f"checkpoint {cid} (seq {e.seq}): the checkpoints table (manifest {str(row.manifest_hash)[:12]}, "
                    f"seq {row.event_seq}, parent {row.parent_id}) disagrees with the dump event (manifest "
                    f"{event.manifest[:12]}, seq {e.seq}, parent {event.parent_id})")
        problems += [f"checkpoint {cid}: the checkpoints table lists it at seq {r.event_seq}, but the log has no "
                     "dump event for it" for cid, r in sorted(by_id.items()) if cid not in dumps]
        return problems

    # -- the checkpoint tree ------------------------------------------------------------------------------
    def segments(self) -> dict[int, list[LogEntry]]:
        """For each checkpoint, the events from its parent's state to its dump (a load or resume that set
        that state, and the dump, included). A root checkpoint's segment starts after the creation."""
        segments: dict[int, list[LogEntry]] = {}
        pending: list[LogEntry] = []
        for e in self.entries:
            event = e.event
            if isinstance(event, ExperimentCreated):
                pending = []
            elif isinstance(event, CheckpointDumped):
                segments[event.checkpoint_id] = [*pending, e]
                pending = []
            elif isinstance(event, CheckpointLoaded):
                pending = [e]
            elif isinstance(event, ExperimentResumed):  # the base's state plus the events it re-executed
                pending = [x for x in self.redo_of(e) if not isinstance(x.event, ExperimentResumed)] + [e]
            else:
                pending.append(e)
        return segments


def walk(store: Store | DirectReader, experiment: str | ExperimentRow, *, strict: bool = True) -> Log:
    """Read and decode an experiment's whole log (by name or row), in one pass.

    ``strict=False`` (listings) keeps an event that does not decode as an
    :class:`~weightslab.events.domain.UndecodedEvent` instead of raising.

    Raises:
        UnknownExperimentError: no such experiment.
        EventPayloadError: (strict) an event that does not decode (the message names its seq).

    Example:
        >>> log = walk(Store.open("./store"), "x0")
        >>> [(e.seq, e.kind, e.head) for e in log][:3]
        [(1, 'create', None), (2, 'train', None), (3, 'eval', None)]
    """
    row: Any = store.get_experiment(experiment) if isinstance(experiment, str) else experiment
    records = [RecordedEvent.from_row(r, strict=strict) for r in store.events(row.experiment_id)]
    return Log.of(row.name, row.experiment_id, records)
