"""The routes of the UI: one function per page or fragment (see :mod:`weightslab.ui.app`)."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from weightslab.errors import ConfigurationError, UnknownExperimentError, WeightsLabError
from weightslab.history.lineage import Lineage
from weightslab.history.log import Log
from weightslab.history.store import ExperimentRow
from weightslab.ui import experiments as runs
from weightslab.ui import requests as outside
from weightslab.ui import samples as sample_rows
from weightslab.ui.curves import curves
from weightslab.ui.lineage import tree
from weightslab.ui.neurons import neuron_layers, widths_over_time
from weightslab.ui.state import UI
from weightslab.ui.timeline import timeline
from weightslab.ui.values import since

__all__ = ["POLL_SECONDS", "VENDOR", "http_error", "store_error", "table", "templates"]

HERE = Path(__file__).parent
POLL_SECONDS = 2  # how often an open page asks whether the store moved
#: The vendored JavaScript (weightslab/ui/static/vendor/, each with its licence; see docs/ui.md).
VENDOR = {"htmx": "vendor/htmx-2.0.11/htmx.min.js", "echarts": "vendor/echarts-6.1.0/echarts.min.js"}
_THUMBNAIL_THREADS = 2  # threads that may render thumbnails at once (a limiter per event loop)
_limiters: dict[int, anyio.CapacityLimiter] = {}


def table() -> list[Any]:
    """Every route of the UI."""
    return [
        Route("/", experiments_page),
        Route("/poll", experiments_poll),
        Route("/compare", compare_page),
        Route("/experiments/{eid:int}", experiment_page),
        Route("/experiments/{eid:int}/poll", experiment_poll),
        Route("/experiments/{eid:int}/meta", meta_fragment),
        Route("/experiments/{eid:int}/curves", curves_fragment),
        Route("/experiments/{eid:int}/lineage", lineage_fragment),
        Route("/experiments/{eid:int}/checkpoints/{cid:int}/diff", diff_fragment),
        Route("/experiments/{eid:int}/events", events_fragment),
        Route("/experiments/{eid:int}/neurons", neurons_page),
        Route("/experiments/{eid:int}/neurons/layers", neurons_fragment),
        Route("/experiments/{eid:int}/samples", samples_page),
        Route("/experiments/{eid:int}/samples/histogram", histogram_fragment),
        Route("/experiments/{eid:int}/samples/{split:str}/{sample:int}.png", thumbnail),
        Route("/experiments/{eid:int}/requests", requests_fragment, methods=["GET"]),
        Route("/experiments/{eid:int}/requests", file_request, methods=["POST"]),
        Route("/experiments/{eid:int}/requests/{rid:int}", request_fragment),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def templates() -> Jinja2Templates:
    """The page templates (autoescaped: everything from the store is shown as text)."""
    out = Jinja2Templates(directory=str(HERE / "templates"))
    env = out.env
    env.filters["since"] = since
    env.filters["num"] = lambda v, digits=4: "" if v is None else f"{v:,.{digits}f}"
    env.filters["count"] = lambda v: "" if v is None else f"{v:,}"
    env.filters["short"] = lambda v, n=12: (v or "")[:n]
    env.globals["vendor"] = VENDOR
    env.globals["poll_seconds"] = POLL_SECONDS
    return out


# -- the experiments page --------------------------------------------------------------------------------

def experiments_page(request: Request) -> Response:
    ui, p = _ui(request), request.query_params
    every = runs.experiment_summaries(ui.store)
    sort, descending = p.get("sort") or "experiment_id", p.get("order") == "desc"
    rows = runs.sorted_by(runs.filtered(every, p.get("q") or ""), sort, descending)
    return _render(request, "experiments.html", rows=rows, total=len(every), q=p.get("q") or "", sort=sort,
                   descending=descending, sorts=runs.SORT_KEYS, sig=_store_signature(ui))


def experiments_poll(request: Request) -> Response:
    sig = _store_signature(_ui(request))
    if request.query_params.get("sig") == sig:
        return Response(status_code=204)
    return _render(request, "_poll.html", headers={"HX-Trigger": "storeChanged"},
                   url=request.url.path, param="sig", value=sig)


def compare_page(request: Request) -> Response:
    ui = _ui(request)
    ids = _ids(request.query_params.getlist("id"))
    if not ids:
        raise HTTPException(400, "select one or more experiments to compare (the checkboxes of the experiments page)")
    chosen = [ui.experiment(i) for i in ids]
    branches: list[dict[str, Any]] = []
    for row in chosen:
        log = ui.logs.get(row)
        branches += ui.view("curves", log, partial(curves, log, row.name))["branches"]
    return _render(request, "compare.html", experiments=chosen, curves={"branches": branches, "compare": True})


# -- an experiment ------------------------------------------------------------------------------------------

def experiment_page(request: Request) -> Response:
    ui, row = _experiment(request)
    log = ui.logs.get(row)
    ui.warm(row)  # this experiment's diffs and audit, in the background
    return _render(request, "experiment.html", **_header(ui, row, log), **_curves(ui, log), **_lineage(ui, log),
                   **_events(request, ui, row, log))


def experiment_poll(request: Request) -> Response:
    ui = _ui(request)
    eid = request.path_params["eid"]
    seq, _ = ui.logs.head(eid)
    if request.query_params.get("seq") == str(seq):
        return Response(status_code=204)
    return _render(request, "_poll.html", headers={"HX-Trigger": "newEvents"},
                   url=request.url.path, param="seq", value=str(seq))


def meta_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    return _render(request, "_meta.html", **_header(ui, row, ui.logs.get(row)))


def curves_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    return _render(request, "_curves.html", **_curves(ui, ui.logs.get(row)), experiment=row)


def lineage_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    return _render(request, "_lineage.html", **_lineage(ui, ui.logs.get(row)), experiment=row)


def diff_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    log = ui.logs.get(row)
    cid = request.path_params["cid"]
    return _render(request, "_diff.html", diff=ui.diff(log, cid), checkpoint=cid, experiment=row)


def events_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    return _render(request, "_events.html", **_events(request, ui, row, ui.logs.get(row)), experiment=row)


def neurons_page(request: Request) -> Response:
    ui, row = _experiment(request)
    log = ui.logs.get(row)
    return _render(request, "neurons.html", **_header(ui, row, log), **_neurons(ui, log),
                   **_request_panel(request, ui, row, log))


def neurons_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    return _render(request, "_neurons.html", **_neurons(ui, ui.logs.get(row)), experiment=row)


def samples_page(request: Request) -> Response:
    ui, row = _experiment(request)
    log = ui.logs.get(row)
    query, error, page = _sample_query(request), None, None
    try:
        page = sample_rows.page(ui.store, row.experiment_id, query)
    except ConfigurationError as e:
        error = str(e)
    return _render(request, "samples.html", **_header(ui, row, log), query=query,
                   page=page, error=error, sorts=sample_rows.SORTS,
                   thumbnails=bool(ui.thumbnails is not None and row.recipe),
                   **_request_panel(request, ui, row, log))


def histogram_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    query = _sample_query(request)
    try:
        histogram = sample_rows.histogram(ui.store, row.experiment_id, query)
    except ConfigurationError as e:
        return _render(request, "_histogram.html", histogram=None, error=str(e), query=query)
    return _render(request, "_histogram.html", histogram=histogram, error=None, query=query)


async def thumbnail(request: Request) -> Response:
    """A sample's input as a PNG. Async, on a thread limiter of its own: the first thumbnails wait for the
    recipe to import (seconds), and must not hold the threads every other page runs on."""
    ui = _ui(request)
    row = await anyio.to_thread.run_sync(ui.experiment, request.path_params["eid"])
    split, sample = request.path_params["split"], request.path_params["sample"]
    if split not in ("train", "eval") or ui.thumbnails is None:
        raise HTTPException(404, "no such thumbnail")
    png = await anyio.to_thread.run_sync(ui.thumbnails.png, row.recipe, split, sample, limiter=_limiter())
    if png is None:
        raise HTTPException(404, "this experiment's samples are not images, or its recipe does not import")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


# -- requests: the UI's one write (weightslab/ui/requests.py) ------------------------------------------------

REQUESTS_SHOWN = 20  # the latest requests listed under the forms


async def file_request(request: Request) -> Response:
    """POST: file the request a form asks for; answers its status line (or why the form is wrong)."""
    outside.check_same_origin(request)
    fields, ids = outside.parse_form(request.headers.get("content-type", ""), await request.body())
    return await anyio.to_thread.run_sync(_file, request, fields, ids)


def _file(request: Request, fields: dict[str, str], ids: list[str]) -> Response:
    ui, row = _experiment(request)
    who = f"ui@{request.client.host}" if request.client else "ui"
    try:
        kind, args = outside.form_request(fields, ids)
        filed = _desk(request).file(row, kind, args, who)
    except WeightsLabError as e:  # bad input, or a store this server may not write to (a read-only role)
        return _render(request, "_request_list.html", requests=[], form_error=str(e))
    return _render(request, "_request_list.html", requests=[outside.view(ui.store, filed)], form_error=None)


def requests_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    return _render(request, "_request_list.html", requests=_latest_requests(ui, row), form_error=None)


def request_fragment(request: Request) -> Response:
    ui, row = _experiment(request)
    found = ui.store.request(request.path_params["rid"])
    if found is None or found.experiment_id != row.experiment_id:
        raise HTTPException(404, f"experiment {row.name!r} has no request {request.path_params['rid']}")
    return _render(request, "_request.html", item=outside.view(ui.store, found))


def _latest_requests(ui: UI, row: ExperimentRow) -> list[outside.RequestView]:
    rows = ui.store.list_requests(row.experiment_id)[-REQUESTS_SHOWN:]
    return [outside.view(ui.store, r) for r in reversed(rows)]


def _request_panel(request: Request, ui: UI, row: ExperimentRow, log: Log) -> dict[str, Any]:
    return {"writable": _desk(request).writable, "requests": _latest_requests(ui, row), "form_error": None,
            "checkpoint_ids": sorted(log.dumps()), "neuron_actions": outside.NEURON_ACTIONS}


def _desk(request: Request) -> outside.RequestDesk:
    return request.app.state.requests


def _limiter() -> anyio.CapacityLimiter:
    """The thumbnails' limiter of the running event loop (a limiter belongs to one loop)."""
    import asyncio

    loop = id(asyncio.get_running_loop())
    if loop not in _limiters:
        _limiters[loop] = anyio.CapacityLimiter(_THUMBNAIL_THREADS)
    return _limiters[loop]


# -- parts of pages ----------------------------------------------------------------------------------------

def _header(ui: UI, row: ExperimentRow, log: Log) -> dict[str, Any]:
    head = ui.logs.head(row.experiment_id)
    last = log.entries[-1].record if log.entries else None
    return {"experiment": row, "log_length": len(log), "head_seq": head[0], "head_hash": head[1],
            "last_event_at": getattr(last, "created_at", None), "checkpoints": len(log.dumps()),
            "hyperparameters": runs.hyperparameters(row.config or {}),
            "denied": runs.denied_count(ui.store, row.experiment_id, head[0]),
            "audit": ui.audits.report(row.experiment_id, row.name, head)}


def _curves(ui: UI, log: Log) -> dict[str, Any]:
    return {"curves": ui.view("curves", log, lambda: curves(log))}


def _lineage(ui: UI, log: Log) -> dict[str, Any]:
    lineage = ui.view("lineage", log, lambda: Lineage.of(log))
    return {"tree": ui.view("tree", log, lambda: tree(lineage)), "lineage_text": lineage.render_text()}


def _events(request: Request, ui: UI, row: ExperimentRow, log: Log) -> dict[str, Any]:
    p = request.query_params
    try:
        number = int(p.get("page") or 1)
    except ValueError as e:
        raise HTTPException(400, f"page must be a number, not {p.get('page')!r}") from e
    audit = ui.audits.report(row.experiment_id, row.name, ui.logs.head(row.experiment_id))
    return {"timeline": timeline(log, p.getlist("kind"), number, audit)}


def _neurons(ui: UI, log: Log) -> dict[str, Any]:
    return {"layers": ui.view("neurons", log, lambda: neuron_layers(ui.store, log)),
            "widths": ui.view("widths", log, lambda: widths_over_time(ui.store, log))}


def _sample_query(request: Request) -> sample_rows.SampleQuery:
    try:
        return sample_rows.SampleQuery.parse(request.query_params)
    except ConfigurationError as e:
        raise HTTPException(400, str(e)) from e


def _store_signature(ui: UI) -> str:
    heads = [(e.experiment_id, ui.logs.head(e.experiment_id)) for e in ui.store.list_experiments()]
    return hashlib.sha256(repr(heads).encode()).hexdigest()[:16]


def _ids(values: list[str]) -> list[int]:
    try:
        return list(dict.fromkeys(int(v) for v in values))
    except ValueError as e:
        raise HTTPException(400, f"experiment ids are numbers, not {values!r}") from e


def _experiment(request: Request) -> tuple[UI, ExperimentRow]:
    ui = _ui(request)
    return ui, ui.experiment(request.path_params["eid"])


def _ui(request: Request) -> UI:
    return request.app.state.ui


def _render(request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
            **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context`` (and the request); pages are never cached."""
    return request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _render(request, "error.html", status=exc.status_code, title=str(exc.status_code), message=exc.detail)


async def store_error(request: Request, exc: Exception) -> Response:
    status = 404 if isinstance(exc, UnknownExperimentError) else 400 if isinstance(exc, ConfigurationError) else 503
    return _render(request, "error.html", status=status, title="WeightsLab error", message=str(exc))
