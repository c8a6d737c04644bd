"""The recorder: turns operations into events, and flushes statistics with them.

Every event is written in one transaction together with ``neuron_stats``, any
blobs it references, and whatever the caller adds (a checkpoint row,
snapshots), so an event never exists without its blobs.

The ``sample_stats`` rows that changed since the previous event (up to one row
per training sample: the costly part) are copied at the event boundary and
upserted by one background writer thread, in order, while training goes on.
Anything that reads the store through the experiment (``exp.sql``, dumps,
snapshots, close) first waits for the writer, so it sees the statistics as of
the last event; a crash loses at most the statistics not yet written.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sqlalchemy import Connection, delete, tuple_

from weightslab.errors import ReplayError
from weightslab.events.record import OperationRecord
from weightslab.events.summary import summarize
from weightslab.experiment.capture import capture
from weightslab.experiment.state import group_hashes, state_hash, tensor_hashes
from weightslab.history.eventlog import EventRow
from weightslab.history.schema import NeuronStat
from weightslab.history.stats import upsert_neuron_stats, upsert_sample_stats
from weightslab.history.tensorcodec import encode_tensor

if TYPE_CHECKING:
    from weightslab.experiment.experiment import Experiment

__all__ = ["Recorder"]

# Id lists longer than this go to a blob instead of the JSON payload.
INLINE_IDS = 2048


def _lower_priority() -> None:
    """Let the statistics writer yield the CPU to training (Linux: a thread has its own nice value)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Recorder:
    """Appends an experiment's events (see module docstring)."""

    def __init__(self, exp: Experiment, experiment_id: int, last_seq: int, code_version: str,
                 *, detached: bool = False) -> None:
        self._exp = exp
        self.detached = detached  # a replay replica: nothing is ever written
        self.experiment_id = experiment_id
        self.last_seq = last_seq
        self.code_version = code_version
        self.muted = 0  # > 0 while replaying or restoring: operations are not recorded again
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        # neuron counters as last written to SQL, per (layer, split): only changes are written again
        self._neurons_written: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

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

    def _submit(self, jobs: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        if not jobs:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-stats",
                                              initializer=_lower_priority)
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._writer.submit(self._write_samples, jobs))

    def _write_samples(self, jobs: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        with self._exp.store.transaction() as conn:
            for split, cols in jobs:
                upsert_sample_stats(conn, self.experiment_id, split, cols)

    # -- the observer of model and datasets -------------------------------------------
    def on_operation(self, record: OperationRecord, split: str | None = None) -> None:
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
        self.append(record.kind, payload, blobs=blobs)

    # -- appending ---------------------------------------------------------------------
    def state_fingerprint(self) -> tuple[str, dict[str, str]]:
        tensors, _ = capture(self._exp)
        hashes = tensor_hashes(tensors)
        return state_hash(hashes), group_hashes(hashes)

    def append(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        blobs: Mapping[str, torch.Tensor] | None = None,
        in_transaction: Callable[[Connection, int], None] | None = None,
        fingerprint: tuple[str, dict[str, str]] | None = None,
        flush_all: bool = False,
    ) -> EventRow:
        """Append one event with the current state's fingerprint; returns it.

        ``blobs`` are stored and their hashes put in ``payload["blobs"]``;
        ``in_transaction(conn, seq)`` runs inside the event's transaction.
        """
        exp = self._exp
        if self.detached:
            raise ReplayError(
                f"this is a read-only replica of experiment {exp.name!r} for replay; open the experiment "
                "itself (Experiment(..., name=...)) to continue it"
            )
        digest, parts = fingerprint or self.state_fingerprint()
        body = dict(payload)
        body["state"] = parts
        store = exp.store
        with store.transaction() as conn:
            if blobs:
                names = sorted(blobs)
                hashes = store.blobs.put_many(conn, [encode_tensor(blobs[n]) for n in names])
                body["blobs"] = dict(zip(names, hashes))
            row = store.append_event(
                self.experiment_id, kind, body, expected_last_seq=self.last_seq, conn=conn,
                state_hash=digest, code_version=self.code_version,
            )
            written = self._flush_neurons(conn)
            if in_transaction is not None:
                in_transaction(conn, row.seq)
        self.last_seq = row.seq
        self._neurons_written = written  # only once the transaction committed
        self._submit(self._sample_jobs(everything=flush_all))
        exp._after_event(row, summarize(kind, body))
        return row

    # -- statistics ----------------------------------------------------------------------
    def _sample_jobs(self, everything: bool = False) -> list[tuple[str, dict[str, np.ndarray]]]:
        """Copies of the sample rows changed since the last event, per split."""
        jobs = []
        for split, ds, _ in self._exp._splits():
            stats = ds.stats
            ids = ds.take_dirty_ids()
            if everything:
                ids = np.arange(len(ds))
            if not len(ids):
                continue
            unseen = stats.exposure_amount[ids] == 0
            age = stats.prediction_age[ids].astype(np.float64)
            age[unseen] = np.nan
            pred = stats.prediction[ids].astype(np.float64)
            pred[unseen] = np.nan
            label = stats.label[ids].astype(np.float64)
            label[unseen] = np.nan
            jobs.append((split, {
                "sample_id": ids, "prediction_age": age,
                "prediction_loss": stats.prediction_loss[ids].astype(np.float64),
                "exposure_amount": stats.exposure_amount[ids].copy(), "deny_listed": stats.deny_listed[ids].copy(),
                "prediction": pred, "label": label,
            }))
        return jobs

    def _flush_neurons(self, conn: Connection) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
        """Write the neuron rows that changed since the last write; returns the new written state."""
        written = dict(self._neurons_written)
        rows: list[tuple[int, int, str, str, int, int]] = []
        rewrite: list[tuple[int, str]] = []
        for li, lname, split, trig, seen in self._exp._neuron_counters():
            prev = written.get((li, split))
            if prev is not None and len(prev[0]) == len(trig):
                changed = np.flatnonzero((prev[0] != trig) | (prev[1] != seen))
            else:  # first write, or the layer's width changed: rewrite the layer
                rewrite.append((li, split))
                changed = np.arange(len(trig))
            rows.extend(zip([li] * len(changed), changed.tolist(), [split] * len(changed), [lname] * len(changed),
                            trig[changed].tolist(), seen[changed].tolist()))
            written[(li, split)] = (trig.copy(), seen.copy())
        if rewrite:  # one statement for every layer rewritten (a first write covers them all)
            conn.execute(delete(NeuronStat).where(NeuronStat.experiment_id == self.experiment_id,
                                                  tuple_(NeuronStat.layer_index, NeuronStat.split).in_(rewrite)))
        upsert_neuron_stats(conn, self.experiment_id, rows)
        return written
