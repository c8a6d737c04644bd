"""The recorder: turns operations into events, and flushes statistics with them.

It needs a store, the experiment's id and a fingerprint of the live state, and
the statistics to write beside each event; it knows nothing else of the
experiment. Every event is written in one transaction together with the changed
``neuron_stats`` rows, any blobs it names, and whatever the caller adds (a
checkpoint row, snapshots), so an event never exists without its blobs.

The ``sample_stats`` rows that changed since the previous event (up to one row
per training sample: the costly part) are copied at the event boundary and
upserted by one background writer thread, in order, while training goes on.
A long training call also hands over the rows of the batches it has applied so
far (every ``FLUSH_SAMPLES`` samples, :meth:`Recorder.write_changed_rows`), so
that the writer works while the call trains instead of after it; if the call
then fails, the rows of the rebuilt state are written back at once, and a crash
before its event leaves rows that reopening rewrites (it writes every row).
Anything that reads the store through the experiment (``exp.sql``, dumps,
snapshots, close) first waits for the writer, so it sees the statistics as of
the last event; a crash loses at most the statistics not yet written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from weightslab.errors import IntegrityError, ReplayError
from weightslab.events.codec import normalise
from weightslab.events.domain import DomainEvent, event_class
from weightslab.events.record import OperationRecord
from weightslab.experiment.runtime import Fingerprint
from weightslab.experiment.statistics import SampleJob, Statistics
from weightslab.history.eventlog import EventRow
from weightslab.history.requests import RequestRow, Status
from weightslab.history.store import Store
from weightslab.history.tensorcodec import encode_tensor

if TYPE_CHECKING:
    from weightslab.experiment.distributed import Group

__all__ = ["INLINE_IDS", "Recorder"]

#: Id lists longer than this go to a blob instead of the JSON payload.
INLINE_IDS = 2048

#: Called after each committed event (e.g. TensorBoard's operation markers).
Listener = Callable[[EventRow, DomainEvent], None]
#: Runs inside an event's transaction, given the connection and the event's seq (a checkpoint row, snapshots).
InTransaction = Callable[[Any, int], None]


def _lower_priority() -> None:
    """Let the statistics writer yield the CPU to training (Linux: a thread has its own nice value)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Recorder:
    """Appends one experiment's events (see the module docstring).

    Args:
        store: where the events go.
        experiment_id: the experiment's id in the store.
        last_seq: the seq of its latest event (0 for none).
        code_version: recorded with each event.
        fingerprint: the fingerprint of the live state (recorded with each event).
        statistics: the rows written beside each event.
        detached: a replay replica, which never writes (appending raises).
    """

    def __init__(self, store: Store, experiment_id: int, last_seq: int, code_version: str, *,
                 fingerprint: Callable[[], Fingerprint], statistics: Statistics, detached: bool = False) -> None:
        self.store = store
        self.experiment_id = experiment_id
        self.last_seq = last_seq
        self.code_version = code_version
        self.detached = detached
        self.muted = 0  # > 0 while replaying: operations are not recorded again
        self.last_hash: str | None = None  # hash of the event at last_seq, as this writer knows it
        #: Why this experiment's live state can no longer be trusted (a failed write whose rollback failed
        #: too); None while it can. Nothing is appended once it is set: the experiment must be reopened.
        self.broken: str | None = None
        self.listeners: list[Listener] = []
        #: Under torch.distributed (experiment/distributed.py): each event is agreed between the ranks before
        #: it is written, and only rank 0 writes; the other ranks' recorders mirror its seq and hash.
        self.group: Group | None = None
        self._deferred = 0  # > 0 (ranks > 0) inside transaction(): the seq is confirmed when it ends
        self._written: tuple[int, str] | None = None  # (rank 0) the event its transaction() is committing
        #: The outside request being applied (experiment/requests.py): the next event names it, has its author
        #: as actor, and marks it applied in the same transaction; ``request_seq`` is then that event's seq.
        self.request: RequestRow | None = None
        self.request_seq: int | None = None
        self._fingerprint = fingerprint
        self._statistics = statistics
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        # neuron counters as last written to SQL, per (layer, split): only changes are written again
        self._neurons_written: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def fingerprint(self) -> Fingerprint:
        """The fingerprint of the live state now."""
        return self._fingerprint()

    def check_writable(self) -> None:
        """Refuse to start an operation this recorder could not record.

        Raises:
            ReplayError: a detached replica, or an experiment whose live state could not be rebuilt.
        """
        if self.detached:
            raise ReplayError(
                "this is a read-only replica of the experiment for replay; open the experiment itself "
                "(Experiment(..., name=...)) to continue it")
        if self.broken is not None:
            raise ReplayError(f"this experiment's live state is no longer the one its log describes ({self.broken}); "
                              "reopen it: Experiment(..., name=...) rebuilds it from the store")

    def check_head(self) -> None:
        """Check that the store's log still ends where this writer left it (before restoring a state).

        Raises:
            ConcurrencyError / IntegrityError: another writer appended, or events were deleted.
        """
        seq, digest = self.store.head(self.experiment_id)
        last = self.store.event_hash(self.experiment_id, self.last_seq) if self.last_seq else None
        if (seq, digest) == (self.last_seq, self.last_hash) and last == self.last_hash:
            return
        if seq > self.last_seq and last == self.last_hash:
            from weightslab.errors import ConcurrencyError

            raise ConcurrencyError(
                f"experiment {self.experiment_id} has events up to seq {seq}, but this session's last is "
                f"{self.last_seq}: another process appended to it. Reopen the experiment to continue from "
                "the latest state.")
        raise IntegrityError(
            f"the store's log of experiment {self.experiment_id} no longer ends at this session's last event "
            f"(seq {self.last_seq}): its head is seq {seq} and that event is "
            f"{'gone' if last is None else 'changed'}. Nothing was changed; run `weightslab audit` and restore "
            "the store from a backup")

    # -- the background statistics writer ----------------------------------------------
    def wait(self) -> None:
        """Block until every queued statistics flush is in the store; re-raise a failed one."""
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        self.wait()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def write_changed_rows(self) -> None:
        """Queue the ``sample_stats`` rows changed since the last event (or the last call) for the writer now,
        without an event: a long training call streams its rows while it trains, and a failed one writes
        back the rows of the state it rebuilt (a replica never writes)."""
        if not self.detached and self.group is None:
            self._submit(self._statistics.sample_jobs())

    def _submit(self, jobs: list[SampleJob]) -> None:
        if not jobs:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-stats",
                                              initializer=_lower_priority)
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._writer.submit(self.store.write_sample_rows, self.experiment_id, jobs))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """The store's transaction, for a caller whose own writes commit with an event (creation, dump).

        Under torch.distributed it is rank 0's; the other ranks get ``None`` (they write nothing) and, when
        it ends, rank 0's outcome: the seq, hash and experiment id it committed, or its error (raised).
        """
        group = self.group
        if group is None:
            with self.store.transaction() as conn:
                yield conn
            return
        from weightslab.experiment.distributed import Outcome

        if group.writes:
            self._written = None
            try:
                with self.store.transaction() as conn:
                    yield conn
            except BaseException as e:
                group.outcome(Outcome(error=f"{type(e).__name__}: {e}"))
                raise
            seq, digest = self._written or (self.last_seq, self.last_hash)
            group.outcome(Outcome(seq, digest, self.experiment_id))
            return
        self._deferred += 1
        try:
            yield None
        except BaseException:
            with contextlib.suppress(Exception):  # the error of this rank is the one to raise
                group.outcome()
            raise
        finally:
            self._deferred -= 1
        done = group.outcome()
        self.last_seq, self.last_hash, self.experiment_id = done.seq, done.hash, done.experiment_id

    # -- the observer of model and datasets -------------------------------------------
    def record_operation(self, record: OperationRecord, split: str | None = None) -> None:
        """Append the event of an operation the model or a dataset reports (unless muted)."""
        if self.muted or self.detached:
            return
        payload: dict[str, Any] = {"args": dict(record.args), "result": dict(record.result)}
        blobs: dict[str, torch.Tensor] = {}
        if split is not None:
            payload["split"] = split
            ids = list(payload["args"].get("ids", []))
            if len(ids) > INLINE_IDS:
                blobs["ids"] = torch.tensor(ids, dtype=torch.int64)
                payload["args"] = {k: v for k, v in payload["args"].items() if k != "ids"}
        self.append(event_class(record.kind).from_payload(normalise(payload)), blobs=blobs)

    # -- appending ---------------------------------------------------------------------
    def append(
        self,
        event: DomainEvent,
        *,
        blobs: Mapping[str, torch.Tensor] | None = None,
        in_transaction: InTransaction | None = None,
        fingerprint: Fingerprint | None = None,
        flush_all: bool = False,
        conn: Any = None,
    ) -> EventRow | None:
        """Append ``event`` with the current state's fingerprint (or the one given); returns its row (None on
        a rank of torch.distributed that does not write).

        ``blobs`` are stored and named in the event; ``in_transaction(conn, seq)`` runs inside the
        event's transaction; ``flush_all`` writes every sample row, not only the changed ones. With
        ``conn``, everything happens in the caller's transaction (which must then commit).

        Raises:
            ReplayError: this is a detached replica, or a broken experiment.
            StoreError: the event could not be written (nothing of it was).
        """
        self.check_writable()
        fp = fingerprint or self._fingerprint()
        if self.group is not None:
            self.group.agree_event(self.last_seq + 1, event, fp)  # DistributedError on every rank, nothing written
            if not self.group.writes:
                self._follow(conn)
                return None
        request = self.request if self.request_seq is None and "request" in event.__dataclass_fields__ else None
        if request is not None:
            event = dataclasses.replace(event, request=request.request_id)  # type: ignore[call-arg]
        if conn is None:
            with self.transaction() as own:
                row, event, written = self._write(own, event, blobs, in_transaction, fp, request)
                self._written = (row.seq, row.hash)
        else:
            row, event, written = self._write(conn, event, blobs, in_transaction, fp, request)
        if request is not None:
            self.request_seq = row.seq
        self.last_seq, self.last_hash = row.seq, row.hash
        self._neurons_written = written  # only once the transaction committed
        self._submit(self._statistics.sample_jobs(everything=flush_all))
        for listener in self.listeners:
            listener(row, event)
        return row

    def _follow(self, conn: Any) -> None:
        """A rank that does not write: learn rank 0's seq and hash (at once, or when the caller's
        :meth:`transaction` ends), and drop the statistics rank 0 writes."""
        if conn is None and not self._deferred:
            with self.transaction():
                pass
        else:
            self.last_seq += 1  # confirmed by rank 0 when the caller's transaction ends
        self._statistics.forget()

    def _write(self, conn: Any, event: DomainEvent, blobs: Mapping[str, torch.Tensor] | None,
               in_transaction: InTransaction | None, fp: Fingerprint, request: RequestRow | None = None,
               ) -> tuple[EventRow, DomainEvent, dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]]:
        store = self.store
        named: dict[str, str] = dict(event.blobs)
        if blobs:
            names = sorted(blobs)
            named.update(zip(names, store.blobs.put_many(conn, [encode_tensor(blobs[n]) for n in names])))
        event = dataclasses.replace(event, state=fp.groups, blobs=named)
        row = store.append_event(self.experiment_id, event.KIND, event.to_payload(), expected_last_seq=self.last_seq,
                                 conn=conn, state_hash=fp.digest, code_version=self.code_version,
                                 actor=request.requested_by if request is not None else None)
        # the event and the request's "applied" commit together, or neither (and never for a request that
        # another process put back in the queue meanwhile)
        if request is not None and not store.finish_request(request.request_id, Status.APPLIED, applied_seq=row.seq,
                                                            conn=conn):
            from weightslab.errors import ConcurrencyError

            raise ConcurrencyError(f"request {request.request_id} is no longer being applied by this process "
                                   "(another process opened the experiment meanwhile); nothing was recorded. "
                                   "Reopen the experiment to continue from the latest state.")
        written = self._flush_neurons(conn)
        if in_transaction is not None:
            in_transaction(conn, row.seq)
        return row, event, written

    def _flush_neurons(self, conn: Any) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
        """Write the neuron rows that changed since the last write; returns the new written state."""
        written = dict(self._neurons_written)
        rows: list[tuple[int, int, str, str, int, int]] = []
        rewrite: list[tuple[int, str]] = []
        for li, lname, split, trig, seen in self._statistics.neuron_counters():
            prev = written.get((li, split))
            if prev is not None and len(prev[0]) == len(trig):
                changed = np.flatnonzero((prev[0] != trig) | (prev[1] != seen))
            else:  # first write, or the layer's width changed: rewrite the layer
                rewrite.append((li, split))
                changed = np.arange(len(trig))
            rows.extend(zip([li] * len(changed), changed.tolist(), [split] * len(changed), [lname] * len(changed),
                            trig[changed].tolist(), seen[changed].tolist()))
            written[(li, split)] = (trig.copy(), seen.copy())
        self.store.write_neuron_rows(conn, self.experiment_id, rows, rewrite=rewrite)
        return written
