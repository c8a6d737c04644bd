"""``weightslab requests``: :meth:`weightslab.history.store.Store.list_requests`."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command

# What the table shows (JSON and CSV carry every column).
_TABLE_COLUMNS = {"request_id": "id", "requested_at": "filed (UTC)", "kind": "kind", "payload": "arguments",
                  "requested_by": "who", "status": "status", "applied_seq": "seq", "error": "why refused"}
_STATUSES = ("pending", "applying", "applied", "refused", "cancelled")


def register(sub: Any) -> None:
    p = command(sub, "requests", "list the requests filed for an experiment, with their status",
                "Status is pending (waiting for a safe point of the process that holds the experiment), "
                "applying, applied (seq: the event it became), refused (with the API's reason; nothing "
                "changed) or cancelled.",
                ["weightslab requests x0", "weightslab requests x0 --status refused --json"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--status", choices=_STATUSES, help="only requests of this status")
    add_format(p, "table", "json", "csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_frame
    from weightslab.history.requests import requests_frame
    from weightslab.history.store import Store

    with Store.open(args.store, create=False, read_only=True) as store:
        row = store.get_experiment(args.name)
        frame = requests_frame(store.list_requests(row.experiment_id, args.status))
    if args.format == "table":
        frame = frame[list(_TABLE_COLUMNS)].rename(columns=_TABLE_COLUMNS)
    print_frame(frame, args.format)
    return 0
