"""``weightslab experiments``: :func:`weightslab.history.audit.experiments_frame` (as rows: :func:`weightslab.history.listings.experiments_rows`)."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command


def register(sub: Any) -> None:
    p = command(sub, "experiments", "list the experiments of a store",
                "One row per experiment: id, name, creation time, number of events and checkpoints.",
                ["weightslab experiments --store ./store", "weightslab experiments --format json"])
    add_format(p, "table", "json", "csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_frame
    from weightslab.history.direct import open_reader
    from weightslab.history.listings import experiments_rows

    with open_reader(args.store) as store:
        frame = experiments_rows(store)
    if args.format == "table" and not frame.rows:
        print(f"no experiments in {args.store or 'the store'}")
        return 0
    print_frame(frame, args.format)
    return 0
