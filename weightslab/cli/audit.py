"""``weightslab audit``: :func:`weightslab.history.audit.audit_experiment` and ``audit_store``."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command


def register(sub: Any) -> None:
    p = command(sub, "audit", "verify hash chains and blobs; exit 1 naming the first bad seq or blob",
                "Checks that every event's hash covers its content and its predecessor (an edited, "
                "deleted or reordered event breaks the chain), and that every manifest, tensor and "
                "snapshot blob the history names exists and matches its hash, and that the log still ends "
                "at its head (the latest event's seq and hash, anchored with every append: a log cut short "
                "fails). Prints the head hash: keep it elsewhere and pass it to --expect-head later to prove "
                "that nothing up to it was cut. Without NAME, audits every experiment of the store. "
                "Exit 0: all verified; 1: tampered or damaged.",
                ["weightslab audit x0", "weightslab audit x0 --expect-head 3f9a…(64 hex digits)",
                 "weightslab audit --all --json --store postgresql+psycopg://me@db/wl"])
    target = p.add_mutually_exclusive_group()
    target.add_argument("name", metavar="NAME", nargs="?", default=None, help="experiment name")
    target.add_argument("--all", action="store_true", help="audit every experiment (the default without NAME)")
    p.add_argument("--expect-head", metavar="HASH", default=None,
                   help="hash of an event the log must still hold (a head printed by an earlier audit); with NAME")
    add_format(p, "text", "json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_json
    from weightslab.errors import ConfigurationError
    from weightslab.history.audit import audit_experiment, audit_store
    from weightslab.history.store import Store

    if args.expect_head is not None and args.name is None:
        raise ConfigurationError("--expect-head checks one experiment: give its NAME too")
    with Store.open(args.store, create=False, read_only=True) as store:
        report = audit_store(store) if args.name is None else audit_experiment(store, args.name,
                                                                               expect_head=args.expect_head)
    if args.format == "json":
        print_json(report.to_dict())
    else:
        print(report.render_text())
    return 0 if report.ok else 1
