"""``weightslab experiments``: :func:`weightslab.history.audit.experiments_frame`."""

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
    from weightslab.history.audit import experiments_frame
    from weightslab.history.store import Store

    with Store.open(args.store, create=False, read_only=True) as store:
        frame = experiments_frame(store)
    if args.format == "table" and frame.empty:
        print(f"no experiments in {args.store or 'the store'}")
        return 0
    print_frame(frame, args.format)
    return 0
