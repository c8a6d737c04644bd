"""``weightslab diff``: :func:`weightslab.history.diff.diff_checkpoints`."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command


def register(sub: Any) -> None:
    p = command(sub, "diff", "compare two checkpoints: events between them, tensors, architecture, deny lists",
                "Lists the events from the checkpoints' common ancestor to each, the tensors whose "
                "content differs (by hash), the change of neurons per layer, and per split the samples "
                "newly denied or allowed from A to B.",
                ["weightslab diff x0 1 2", "weightslab diff x0 0 3 --json"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("a", metavar="A", type=int, help="checkpoint id (from)")
    p.add_argument("b", metavar="B", type=int, help="checkpoint id (to)")
    add_format(p, "text", "json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_json
    from weightslab.history.diff import diff_checkpoints
    from weightslab.history.store import Store

    with Store.open(args.store, create=False, read_only=True) as store:
        diff = diff_checkpoints(store, args.name, args.a, args.b)
    if args.format == "json":
        print_json(diff.to_dict())
    else:
        print(diff.render_text())
    return 0
