"""Audits run in the background, one at a time, at most one per experiment at once.

:func:`weightslab.history.audit.audit_experiment` re-hashes every event and every
blob the history names: seconds for a long history, and as long again each time
the head moves. So an experiment's audit starts when a page asks for it, a new one
only once the last one is done and the head has moved since (and not sooner than
:data:`MIN_INTERVAL` after it), and the pages show the latest finished report with
the seq it reached: the events after it are *auditing* until the next one ends.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from weightslab.history.audit import AuditReport, audit_experiment
from weightslab.history.store import Store

__all__ = ["MIN_INTERVAL", "Audits"]

MIN_INTERVAL = 10.0  # seconds between the end of an experiment's audit and the start of its next


@dataclass
class _Audit:
    head: tuple[int, str | None]  # what the running (or the last) audit was started at
    running: Future[AuditReport] | None = None
    report: AuditReport | None = None  # the latest finished one
    finished: float = 0.0


class Audits:
    """The latest audit report of each experiment, computed in a background thread."""

    def __init__(self, store: Store, min_interval: float = MIN_INTERVAL) -> None:
        self.store = store
        self.min_interval = min_interval
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-audit")
        self._audits: dict[int, _Audit] = {}
        self._lock = threading.Lock()

    def report(self, experiment_id: int, name: str, head: tuple[int, str | None]) -> AuditReport | None:
        """The latest finished report (its ``head_seq`` may be behind ``head``; None: none yet). Starts an
        audit of ``head`` if none runs for the experiment and the last one is older than ``head``.

        Raises:
            StoreError: the last audit could not read the store.
        """
        with self._lock:
            audit = self._audits.get(experiment_id)
            if audit is not None and audit.running is not None and audit.running.done():
                running, audit.running, audit.finished = audit.running, None, time.monotonic()
                audit.report = running.result()  # an exception here (the store failed) is the page's error
            due = audit is None or (audit.running is None and audit.head != head
                                    and time.monotonic() - audit.finished >= self.min_interval)
            if due:
                audit = self._audits[experiment_id] = _Audit(head, report=audit.report if audit else None)
                audit.running = self._pool.submit(audit_experiment, self.store, name)
            assert audit is not None
            return audit.report

    def running(self, experiment_id: int) -> bool:
        """Whether an audit of the experiment is under way (started, not yet collected by :meth:`report`)."""
        with self._lock:
            audit = self._audits.get(experiment_id)
            return audit is not None and audit.running is not None

    def close(self) -> None:
        """Cancel the audits not started, and wait for the one running (it holds a connection)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
