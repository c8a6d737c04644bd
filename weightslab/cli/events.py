"""``weightslab events``: :func:`weightslab.history.listings.events_rows` (no pandas; no SQLAlchemy on a
SQLite store, :mod:`weightslab.history.direct`)."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command

# What the table shows (JSON and CSV carry every column: hashes and payloads too).
_TABLE_COLUMNS = {"seq": "seq", "created_at": "time (UTC)", "kind": "kind", "summary": "summary", "actor": "who",
                  "code_version": "code version"}


def register(sub: Any) -> None:
    p = command(sub, "events", "list an experiment's events: seq, time, kind, summary, who, code version",
                "Who is user@host; code version is the weightslab version and the git revision of the "
                "user's working tree. --format json and csv add the hashes and payloads.",
                ["weightslab events x0 --from 10 --to 20", "weightslab events x0 --csv > events.csv"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--from", dest="from_seq", type=int, metavar="SEQ", help="first seq to list (default 1)")
    p.add_argument("--to", dest="to_seq", type=int, metavar="SEQ", help="last seq to list (default: the last)")
    add_format(p, "table", "json", "csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_frame
    from weightslab.history.direct import open_reader
    from weightslab.history.listings import events_rows

    with open_reader(args.store) as store:
        frame = events_rows(store, args.name, args.from_seq, args.to_seq)
    if args.format == "table":
        frame = frame.select(_TABLE_COLUMNS)
    print_frame(frame, args.format)
    return 0
