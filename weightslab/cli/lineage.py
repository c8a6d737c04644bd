"""``weightslab lineage``: :meth:`weightslab.history.lineage.Lineage.of` a walked log."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command


def register(sub: Any) -> None:
    p = command(sub, "lineage", "print an experiment's checkpoint tree (text, Graphviz DOT, Mermaid or JSON)",
                "The text form is what print(exp.chkpt_manager) shows.",
                ["weightslab lineage x0", "weightslab lineage x0 --format dot | dot -Tpng > lineage.png"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    add_format(p, "text", "dot", "mermaid", "json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_json
    from weightslab.history.direct import open_reader
    from weightslab.history.lineage import Lineage
    from weightslab.history.log import walk

    with open_reader(args.store) as store:
        lineage = Lineage.of(walk(store, args.name))
    if args.format == "json":
        print_json(lineage.to_dict())
    elif args.format == "dot":
        print(lineage.to_dot())
    elif args.format == "mermaid":
        print(lineage.to_mermaid())
    else:
        print(lineage.render_text())
    return 0
