"""Applying outside requests: the running experiment's side of the ``requests`` queue.

At each safe point (the start of every public operation of the Experiment, hence between
the chunks of ``train_n_steps_with_eval_full``; and ``exp.apply_requests()``) the process
asks the store for the oldest pending request of its experiment: one indexed probe, the
whole cost when there is none. Each pending request, oldest first, is claimed (an UPDATE
that only one process can win), checked again, and made through the same API call a
script makes (``exp.model.prune``, ``dataset.deny_samples_where``, ``exp.dump``, …). The
event that call records names the request, has its author as actor, and marks the request
applied in its own transaction. A call the API refuses leaves everything as it was (the
operations are write-ahead) and the request is marked refused with the API's message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from weightslab.errors import (
    ConcurrencyError,
    ConfigurationError,
    ReplayError,
    StoreUnavailableError,
    WeightsLabError,
)
from weightslab.events.requests import check_request
from weightslab.experiment.recorder import Recorder
from weightslab.history.requests import RequestRow, Status
from weightslab.history.store import Store

__all__ = ["Call", "RequestQueue"]

#: Makes the API call a request asks for, given its checked arguments.
Call = Callable[[dict[str, Any]], object]


class RequestQueue:
    """The pending requests of one experiment, applied through ``calls`` (event kind → API call).

    Args:
        store: the experiment's store.
        recorder: records the events (and ties each to its request).
        calls: the API call of each requestable kind.
        enabled: apply at safe points (``Experiment(..., accept_requests=...)``); ``apply`` works regardless.
    """

    def __init__(self, store: Store, recorder: Recorder, calls: Mapping[str, Call], *, enabled: bool) -> None:
        self.store = store
        self.recorder = recorder
        self.enabled = enabled
        self._calls = dict(calls)
        self._busy = False  # applying: the API calls a request makes are not safe points of their own

    def safe_point(self) -> list[RequestRow]:
        """Apply the pending requests, if this experiment accepts them and any are pending; returns them as
        they ended (applied or refused)."""
        if not self.enabled or self._busy or self.recorder.muted or self.recorder.detached or self._distributed():
            return []
        if self.store.next_request(self.recorder.experiment_id) is None:  # the one query of a quiet safe point
            return []
        return self.apply()

    def apply(self) -> list[RequestRow]:
        """Claim and apply every pending request, oldest first; returns them as they ended."""
        if self._busy:
            return []
        self.recorder.check_writable()
        if self._distributed():
            raise ConfigurationError(
                "outside requests are not applied under torch.distributed yet: every rank must make the same edit "
                "at the same step, and a request is claimed by one process. Make the edit in the script (on every "
                "rank), or run the experiment in one process to take requests")
        done: list[RequestRow] = []
        self._busy = True
        try:
            while (rid := self.store.next_request(self.recorder.experiment_id)) is not None:
                row = self.store.claim_request(rid)
                if row is not None:  # else another process took it, or its author cancelled it
                    done.append(self._apply(row))
        finally:
            self._busy = False
        return done

    def _distributed(self) -> bool:
        """Whether the experiment runs under torch.distributed (experiment/distributed.py gives the recorder a
        group): then no request is claimed (see :meth:`apply`)."""
        return getattr(self.recorder, "group", None) is not None

    def release_stale(self) -> int:
        """Put back in the queue the requests a process that died left half-applied (none of them committed)."""
        return self.store.release_requests(self.recorder.experiment_id)

    def _apply(self, row: RequestRow) -> RequestRow:
        recorder = self.recorder
        recorder.request, recorder.request_seq = row, None
        try:
            self._calls[row.kind](check_request(row.kind, row.payload))
        except (StoreUnavailableError, ConcurrencyError, ReplayError, KeyboardInterrupt, SystemExit):
            # the store, the session or the process failed, not the request: it stays in the queue
            self.store.release_requests(recorder.experiment_id, row.request_id)
            raise
        except Exception as e:  # the API refused it: nothing changed (operations are write-ahead)
            why = str(e) if isinstance(e, WeightsLabError) else f"{type(e).__name__}: {e}"
            self.store.finish_request(row.request_id, Status.REFUSED, error=why)
        else:
            if recorder.request_seq is None:  # the call recorded no event (it had nothing to do)
                self.store.finish_request(row.request_id, Status.APPLIED,
                                          error="nothing to change: no event was recorded")
        finally:
            recorder.request, recorder.request_seq = None, None
        return self.store.request(row.request_id) or row
