"""The experiment's statistics on their way to SQL: sample and neuron rows, and Parquet snapshots.

The ledgers mark the samples whose statistics changed; :meth:`Statistics.sample_jobs`
copies those rows at an event boundary (the recorder writes them in the background).
Snapshots (at every dump and on ``exp.snapshot()``) store ``sample_stats``,
``neuron_stats`` and the per-pass sample history as Parquet blobs; a table whose
rows did not change since its last snapshot names the same blob again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from weightslab.history.snapshots import SnapshotWriter
from weightslab.ledger.stats import STAT_COLUMNS

if TYPE_CHECKING:
    from weightslab.experiment.runtime import NeuronCounters, Runtime

__all__ = ["SampleJob", "Statistics"]

#: (split, columns of the changed rows): what the background writer upserts into ``sample_stats``.
SampleJob = tuple[str, dict[str, np.ndarray]]


class Statistics:
    """Sample and neuron rows of one experiment's runtime, and its snapshots."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._snapshots = SnapshotWriter(rt.store.blobs)
        self._history: list[tuple[str, dict[str, np.ndarray]]] = []  # per-pass rows awaiting the next snapshot
        self._in_snapshot = 0  # how many of them the snapshot being written holds

    def neuron_counters(self) -> list[NeuronCounters]:
        return self._rt.neuron_counters()

    def sample_jobs(self, everything: bool = False) -> list[SampleJob]:
        """Copies of the sample rows changed since the last call (every row: ``everything``), per split."""
        jobs = []
        for split in self._rt.splits:
            ds = split.ledger
            ids = ds.take_dirty_ids()
            if everything:
                ids = np.arange(len(ds))
            if len(ids):
                jobs.append((split.name, ds.stats.rows(ids)))
        return jobs

    def forget(self) -> None:
        """On a rank that does not write (torch.distributed, ranks > 0): drop the changed-row marks and the
        per-pass rows that rank 0 writes."""
        for split in self._rt.splits:
            split.ledger.take_dirty_ids()
            split.ledger.drain_history()
        self._history.clear()
        self._in_snapshot = 0

    # -- the per-pass history ------------------------------------------------------------------------
    def keep_history(self) -> None:
        """Move the ledgers' per-pass rows into the buffer the next snapshot writes (as arrays: the frame
        is built once, when the snapshot is written)."""
        for split in self._rt.splits:
            h = split.ledger.drain_history()
            if len(h.get("sample_id", [])):
                self._history.append((split.name, h))

    def discard_history(self) -> None:
        """Drop the ledgers' per-pass rows not kept yet (they describe work that was undone)."""
        for split in self._rt.splits:
            split.ledger.drain_history()

    # -- snapshots ------------------------------------------------------------------------------------
    def write_snapshots(self, conn: Any, seq: int) -> None:
        """Snapshots of ``sample_stats``, ``neuron_stats`` and the kept history, in the caller's transaction;
        call :meth:`snapshots_committed` once it commits (until then the history rows stay kept: a
        transaction that rolls back loses none)."""
        store, eid = self._rt.store, self._rt.experiment_id
        for table, (digest, build) in self.sources().items():
            self._snapshots.write(conn, eid, table, seq, digest, build)
        self.keep_history()
        self._in_snapshot = len(self._history)
        if self._history:
            frame = pd.concat([pd.DataFrame(h).assign(split=name) for name, h in self._history], ignore_index=True)
            frame = frame[["split", *(c for c in frame.columns if c != "split")]]
            store.write_snapshot(eid, "sample_history", seq, frame, conn=conn)

    def snapshots_committed(self) -> None:
        """The snapshot transaction committed: its history rows are stored."""
        del self._history[:self._in_snapshot]
        self._in_snapshot = 0

    def sources(self) -> dict[str, tuple[str, Callable[[], Any]]]:
        """Per snapshot table (``sample_stats``, ``neuron_stats``): a digest of the arrays its rows are
        built from (SHA-256; equal digests mean equal rows) and the function that builds its DataFrame."""
        rt = self._rt
        rows = hashlib.sha256(b"weightslab.snapshot/sample_stats/1")
        for split in rt.splits:
            ds = split.ledger
            rows.update(f"\0{split.name}\0{len(ds)}".encode())
            for name in STAT_COLUMNS:
                rows.update(np.ascontiguousarray(getattr(ds.stats, name)))

        def samples() -> pd.DataFrame:
            parts = []
            for split in rt.splits:
                df = split.ledger.get_dataframe().reset_index()
                df.insert(0, "split", split.name)
                parts.append(df)
            return pd.concat(parts, ignore_index=True)

        counters = rt.neuron_counters()
        neurons = hashlib.sha256(b"weightslab.snapshot/neuron_stats/1")
        for li, lname, split_name, trig, seen in counters:
            neurons.update(f"\0{li}\0{lname}\0{split_name}\0{len(trig)}\0".encode())
            neurons.update(np.ascontiguousarray(trig, dtype=np.int64))
            neurons.update(np.ascontiguousarray(seen, dtype=np.int64))
        return {"sample_stats": (rows.hexdigest(), samples),
                "neuron_stats": (neurons.hexdigest(), lambda: rt.neuron_frame(counters))}
