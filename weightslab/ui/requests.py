"""The one thing the UI writes: requests for a running experiment (docs/requests.md).

The pages read the store read-only; filing a request goes through the store's
narrow request API (:meth:`~weightslab.history.store.Store.file_request`) on a second,
writable connection opened on the first request filed. The process that holds the
experiment applies it at its next safe point; the page then shows the event it became
(or why it was refused), polling the request until it ends.

Who may write: whoever may read (loopback, or the token elsewhere; see
:mod:`weightslab.ui.security`), unless the server runs with ``--read-only``. Writes are
POSTs that must come from the UI's own pages: the ``Origin`` header (which browsers send
with every POST) must be the server's own, and the ``HX-Request`` header that htmx adds
must be there (a form on another site can send neither); the token cookie is
SameSite=Strict besides.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request

from weightslab.errors import ConfigurationError
from weightslab.events.domain import EventKind, RecordedEvent
from weightslab.history.locate import StoreLocation
from weightslab.history.requests import RequestRow
from weightslab.history.store import ExperimentRow, Store

__all__ = ["NEURON_ACTIONS", "RequestDesk", "RequestView", "check_same_origin", "form_request", "parse_form", "view"]

#: The actions of the neurons page's form: value → (label, event kind) (a value that is a kind is spelled as one).
NEURON_ACTIONS: dict[str, tuple[str, str]] = {
    EventKind.PRUNE: ("prune neurons", EventKind.PRUNE),
    "reinit": ("reinitialise neurons", EventKind.REINIT_NEURONS),
    "add": ("add neurons", EventKind.ADD_NEURONS),
    "lr": ("set neurons' lr ×", EventKind.SET_NEURON_LR),
    "lr_incoming": ("set incoming neurons' lr ×", EventKind.SET_INCOMING_NEURON_LR),
    EventKind.FREEZE: ("freeze layers 0..layer", EventKind.FREEZE),
    EventKind.UNFREEZE: ("unfreeze layers layer..", EventKind.UNFREEZE),
}
_SAMPLE_ACTIONS = {"deny_selected": (EventKind.DENY, "ids"), "allow_selected": (EventKind.ALLOW, "ids"),
                   "deny_filtered": (EventKind.DENY, "where"), "allow_filtered": (EventKind.ALLOW, "where"),
                   "allow_all": (EventKind.ALLOW, "all")}
_CHECKPOINT_ACTIONS = {EventKind.DUMP: EventKind.DUMP, EventKind.LOAD: EventKind.LOAD}  # the form's values


class RequestDesk:
    """Files requests in the store the UI shows, through a writable connection opened on first use.

    Args:
        location: where the store is (that of the UI's read-only store).
        writable: False with ``weightslab ui --read-only``: every write is refused.
    """

    def __init__(self, location: StoreLocation, *, writable: bool) -> None:
        self.location = location
        self.writable = writable
        self._store: Store | None = None
        self._lock = threading.Lock()

    def file(self, experiment: ExperimentRow, kind: str, args: Mapping[str, Any], who: str) -> RequestRow:
        """File a request (checked like any other: see ``events.requests``).

        Raises:
            HTTPException: 403, the UI is read-only.
            ConfigurationError: bad arguments (nothing is filed).
        """
        if not self.writable:
            raise HTTPException(403, "this WeightsLab UI was started with --read-only: it files no requests")
        return self._writer().file_request(experiment.name, kind, args, requested_by=who)

    def _writer(self) -> Store:
        with self._lock:
            if self._store is None:
                loc = self.location
                target = str(loc.root) if loc.backend == "sqlite" and loc.root is not None \
                    else loc.url.render_as_string(hide_password=False)
                self._store = Store.open(target, create=False)
            return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def check_same_origin(request: Request) -> None:
    """Refuse a write that does not come from the UI's own pages (see the module docstring).

    Raises:
        HTTPException: 403, naming what is missing.
    """
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None and origin != own:
        raise HTTPException(403, f"refused: a request from {origin} may not write to this UI ({own})")
    if origin is None and request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise HTTPException(403, "refused: a request from another site may not write to this UI")
    if request.headers.get("hx-request") != "true":
        raise HTTPException(403, "refused: requests are filed from the UI's own pages (or with `weightslab request`)")


MAX_FORM_BYTES = 64 * 1024  # a form of the UI's pages is far smaller (50 sample ids at most)


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], list[str]]:
    """The fields of a URL-encoded form (what htmx posts), and its repeated ``ids``.

    Raises:
        HTTPException: 400 / 413, not a URL-encoded form, or too large.
    """
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise HTTPException(400, "send the form URL-encoded (application/x-www-form-urlencoded)")
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as e:
        raise HTTPException(400, f"the form does not decode ({e})") from e
    fields = {k: v for k, v in pairs if k != "ids"}
    return fields, [v for k, v in pairs if k == "ids"]


def form_request(form: Mapping[str, Any], ids: list[str]) -> tuple[str, dict[str, Any]]:
    """The event kind and arguments a submitted form asks for.

    Raises:
        ConfigurationError: a field missing or malformed (the message names it).
    """
    action = str(form.get("action") or "")
    if action in NEURON_ACTIONS:
        kind = NEURON_ACTIONS[action][1]
        layer = _int(form, "layer")
        if kind == EventKind.FREEZE:
            return kind, {"up_to_index": layer}
        if kind == EventKind.UNFREEZE:
            return kind, {"from_index": layer}
        if kind == EventKind.ADD_NEURONS:
            return kind, {"layer_index": layer, "neuron_count": _int(form, "count")}
        args: dict[str, Any] = {"layer_index": layer, "neuron_indices": _int_list(str(form.get("neurons") or ""))}
        if action.startswith("lr"):
            args["lr"] = _float(form, "lr")
        return kind, args
    if action in _SAMPLE_ACTIONS:
        kind, mode = _SAMPLE_ACTIONS[action]
        split = str(form.get("split") or "train")
        if mode == "ids":
            if not ids:
                raise ConfigurationError("select samples first (the boxes of the table)")
            return kind, {"split": split, "mode": "ids", "ids": _int_list(",".join(ids))}
        if mode == "where":
            where = str(form.get("where") or "").strip()
            if not where:
                raise ConfigurationError("filter the samples first: the request takes the filter's expression")
            return kind, {"split": split, "mode": "where", "query": where}
        return kind, {"split": split, "mode": "all"}
    if action in _CHECKPOINT_ACTIONS:
        kind = _CHECKPOINT_ACTIONS[action]
        return kind, ({"checkpoint_id": _int(form, "checkpoint")} if kind == EventKind.LOAD else {})
    raise ConfigurationError(f"unknown action {action!r}")


def _int(form: Mapping[str, Any], name: str) -> int:
    try:
        return int(str(form.get(name, "")).strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {form.get(name)!r}") from None


def _float(form: Mapping[str, Any], name: str) -> float:
    try:
        return float(str(form.get(name, "")).strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {form.get(name)!r}") from None


def _int_list(text: str) -> list[int]:
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ConfigurationError(f"{text!r} is not a list of indices such as 0,3 or 0-4") from None
    if not out:
        raise ConfigurationError("give the indices, e.g. 0,3 or 0-4")
    return out


@dataclass(frozen=True)
class RequestView:
    """A request as a page shows it, with the event it became."""

    row: RequestRow
    summary: str | None  # the event's, once applied

    @property
    def arguments(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.row.payload.items() if k != "split" or v != "train")


def view(store: Store, row: RequestRow) -> RequestView:
    """``row`` with the summary of the event it became (if it did)."""
    summary = None
    if row.applied_seq is not None:
        events = store.events(row.experiment_id, row.applied_seq, row.applied_seq)
        if events:
            summary = RecordedEvent.from_row(events[0], strict=False).event.summary()
    return RequestView(row, summary)
