"""What the UI's routes read through: the store, opened read-only, and what is kept of it between requests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException

from weightslab.errors import WeightsLabError
from weightslab.history.log import Log
from weightslab.history.store import ExperimentRow, Store
from weightslab.ui.audits import Audits
from weightslab.ui.lineage import checkpoint_diff
from weightslab.ui.logs import Logs
from weightslab.ui.memo import Memo
from weightslab.ui.thumbnails import Thumbnails

__all__ = ["UI", "WARM_LOGS"]

WARM_LOGS = 10  # experiments whose logs are walked when the server starts


@dataclass
class UI:
    """What every route reads through: the store (read-only) and what is kept of it between requests."""

    store: Store
    thumbnails: Thumbnails | None
    owns_store: bool = True  # close() closes the store too
    logs: Logs = field(init=False)
    audits: Audits = field(init=False)
    views: Memo = field(default_factory=lambda: Memo(ttl=3600.0, size=128))  # keyed by head: never stale
    diffs: Memo = field(default_factory=lambda: Memo(ttl=24 * 3600.0, size=512))  # a checkpoint never changes
    background: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-ui"))

    def __post_init__(self) -> None:
        self.logs = Logs(self.store)
        self.audits = Audits(self.store)

    def experiment(self, experiment_id: int) -> ExperimentRow:
        """The experiment of ``experiment_id``.

        Raises:
            HTTPException: 404, no such experiment.
        """
        for row in self.store.list_experiments():
            if row.experiment_id == experiment_id:
                return row
        raise HTTPException(404, f"no experiment with id {experiment_id} in {self.store.describe()}")

    def view(self, kind: str, log: Log, build: Callable[[], Any]) -> Any:
        """A view of ``log`` (curves, tree, widths) kept while its head does not move."""
        last = log.entries[-1].record.hash if log.entries else None
        return self.views.get((kind, log.experiment_id, log.last_seq, last), build)

    def diff(self, log: Log, checkpoint: int) -> dict[str, Any]:
        entry = log.dumps().get(checkpoint)
        key = (log.experiment_id, checkpoint, getattr(entry.event, "manifest", None) if entry else None)
        return self.diffs.get(key, lambda: checkpoint_diff(self.store, log, checkpoint))

    def warm(self, experiment: ExperimentRow | None = None) -> None:
        """In the background, so that pages find them done: for ``experiment``, its log, its audit and its
        checkpoints' diffs; without one (at start), the logs of the :data:`WARM_LOGS` newest experiments
        (no audit: on a team's store, auditing everything at start would read every blob)."""
        def work() -> None:
            if experiment is None:
                for row in sorted(self.store.list_experiments(), key=lambda r: -r.experiment_id)[:WARM_LOGS]:
                    self.logs.get(row)
                return
            log = self.logs.get(experiment)
            self.audits.report(experiment.experiment_id, experiment.name, self.logs.head(experiment.experiment_id))
            for cid in sorted(log.dumps()):
                with contextlib.suppress(WeightsLabError):
                    self.diff(log, cid)

        self.background.submit(work)

    def close(self) -> None:
        """Stop the background work (waiting for the running task: it holds a connection), close the store."""
        self.background.shutdown(wait=True, cancel_futures=True)
        self.audits.close()
        if self.owns_store:
            self.store.close()
