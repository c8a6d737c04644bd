"""``weightslab ui``: :func:`weightslab.ui.server.serve`."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import command


def register(sub: Any) -> None:
    p = command(sub, "ui", "serve a web UI over the store: experiments, curves per branch, lineage, neurons, samples",
                "Reads the store read-only while experiments run (new events appear within seconds). "
                "Bound to 127.0.0.1 by default; on any other --host every request needs a token, printed "
                "at start (or set by $WEIGHTSLAB_UI_TOKEN). Its edit buttons file requests that the running "
                "experiment applies (--read-only: none). Needs pip install 'weightslab[ui]'.",
                ["weightslab ui --store ./store",
                 "WEIGHTSLAB_UI_TOKEN=s3cret weightslab ui --store postgresql+psycopg://me@db/wl --host 0.0.0.0"])
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--no-thumbnails", dest="thumbnails", action="store_false",
                   help="no sample thumbnails (they import the experiment's recorded recipe, and torch)")
    p.add_argument("--read-only", action="store_true",
                   help="file no requests: hide the edit buttons, refuse writes (see docs/requests.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.errors import ConfigurationError

    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port {args.port} is not a TCP port: give 1..65535, or 0 for any free port")
    try:
        from weightslab.ui.server import serve
        serve(args.store, host=args.host, port=args.port, thumbnails=args.thumbnails, read_only=args.read_only)
    except ModuleNotFoundError as e:
        if e.name not in ("starlette", "uvicorn", "jinja2"):
            raise
        raise ConfigurationError(f"the UI needs {e.name}, which is not installed: pip install 'weightslab[ui]'") from e
    except KeyboardInterrupt:
        pass
    return 0
