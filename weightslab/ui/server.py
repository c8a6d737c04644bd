"""Serving the UI with uvicorn: the address, the token, and what is printed at start."""

from __future__ import annotations

import socket
import sys
from typing import TextIO

from weightslab.errors import ConfigurationError
from weightslab.ui.security import TOKEN_ENV, is_loopback, resolve_token

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def serve(store: str | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, thumbnails: bool = True,
          out: TextIO | None = None, read_only: bool = False) -> None:
    """Serve the UI over ``store`` until interrupted (Ctrl-C).

    On a loopback ``host`` no token is needed (unless ``$WEIGHTSLAB_UI_TOKEN`` is set); on any other
    host every request needs the token, generated here (or taken from that variable) and printed in
    the address to open. ``read_only``: the pages file no requests (docs/requests.md).

    Raises:
        StoreUnavailableError: no store there, or unreachable.
        ConfigurationError: the port is taken or not allowed.

    Example:
        >>> serve("./store", port=8765)  # then open http://127.0.0.1:8765/
    """
    import uvicorn

    from weightslab.ui.app import create_app

    out = out or sys.stdout
    token = resolve_token(host)
    app = create_app(store, token=token, loopback=is_loopback(host), thumbnails=thumbnails, read_only=read_only)
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    print(f"WeightsLab UI over {app.state.ui.store.describe()}: open {url}", file=out, flush=True)
    if token:
        print(f"  every request needs this token ({'set by $' + TOKEN_ENV if _from_env() else 'new at each start'}; "
              f"programs send 'Authorization: Bearer TOKEN')", file=out, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    server.run(sockets=[sock])


def _from_env() -> bool:
    import os

    return bool(os.environ.get(TOKEN_ENV, "").strip())


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                                 "(0: any free port) or --host") from e
    sock.listen(128)
    return sock
