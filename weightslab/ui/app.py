"""The ASGI application: Starlette routes over one read-only store, pages rendered by Jinja2.

Each route (:mod:`weightslab.ui.routes`) is a plain function of the request, which
Starlette runs in its thread pool; it reads through :class:`~weightslab.ui.state.UI`
(the store opened read-only, the walked logs, the audits, the thumbnails) and
renders a template. Pages are whole HTML pages; the parts a page refreshes or loads
on demand (curves, lineage, diff, timeline, histogram, neuron layers) are routes of
their own returning HTML fragments, which htmx swaps in. Live updates: an open page
polls ``…/poll`` every :data:`~weightslab.ui.routes.POLL_SECONDS` seconds (204 while
nothing changed); when the head moved, the answer carries ``HX-Trigger: newEvents``
and the parts of the page that show the log reload themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from weightslab.errors import WeightsLabError
from weightslab.history.store import Store
from weightslab.ui import routes
from weightslab.ui.requests import RequestDesk
from weightslab.ui.security import LOOPBACK_NAMES, SecurityHeaders, TokenGate
from weightslab.ui.state import UI
from weightslab.ui.thumbnails import Thumbnails

__all__ = ["create_app"]


def create_app(store: str | Store | None = None, *, token: str | None = None, loopback: bool = True,
               thumbnails: bool = True, warm: bool = True, read_only: bool = False) -> Starlette:
    """The UI over ``store`` (a directory, a URL, or an open Store), opened read-only.

    Args:
        token: require this token on every request (see :mod:`weightslab.ui.security`).
        loopback: the server is bound to a loopback address: answer only requests for a loopback host.
        thumbnails: show thumbnails of image samples (imports the recorded recipe: torch).
        warm: walk every experiment's log and audit it in the background at start.
        read_only: file no requests (``weightslab ui --read-only``): the pages only read.

    Raises:
        StoreUnavailableError: no store there (it is never created), or unreachable.

    Example:
        >>> app = create_app("./store")  # uvicorn.run(app, host="127.0.0.1", port=8765)
    """
    opened = store if isinstance(store, Store) else Store.open(store, create=False, read_only=True)
    ui = UI(opened, Thumbnails() if thumbnails else None, owns_store=not isinstance(store, Store))
    desk = RequestDesk(opened.location, writable=not read_only)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm:
            ui.warm()
        yield
        ui.close()
        desk.close()

    middleware = [Middleware(SecurityHeaders)]
    if loopback:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
    if token:
        middleware.append(Middleware(TokenGate, token=token))
    app = Starlette(routes=routes.table(), middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: routes.http_error, WeightsLabError: routes.store_error})
    app.state.ui = ui
    app.state.requests = desk
    app.state.templates = routes.templates()
    return app
