"""The ``weightslab`` command: the store's tools, mirroring the Python API.

Each subcommand has a one-line summary and an example in its ``--help``.
Read-only commands import no torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from weightslab.errors import WeightsLabError

__all__ = ["main"]

EPILOG = "The store is a directory (SQLite) or a SQLAlchemy URL; default $WEIGHTSLAB_STORE or ./store."


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="store directory or URL (default: $WEIGHTSLAB_STORE or ./store)")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from weightslab.history import migrate
    from weightslab.history.locate import make_engine, resolve_store
    from weightslab.history.store import translate_errors

    location = resolve_store(args.store)
    with translate_errors(location.describe()):
        engine = make_engine(location)
        try:
            before, after = migrate.upgrade(engine)
        finally:
            engine.dispose()
    print(f"{location.describe()}: schema {before or '(empty)'} -> {after}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from weightslab.history import migrate
    from weightslab.history.locate import make_engine, resolve_store
    from weightslab.history.store import translate_errors

    location = resolve_store(args.store)
    with translate_errors(location.describe()):
        engine = make_engine(location)
        try:
            with engine.connect() as conn:
                current = migrate.current_revision(conn)
        finally:
            engine.dispose()
    head = migrate.head_revision()
    state = "up to date" if current == head else f"this code expects {head}"
    print(f"{location.describe()}: schema {current or '(empty)'} ({state})")
    return 0 if current == head else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightslab", description="WeightsLab: inspect, audit and replay recorded experiments.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="manage the store's schema version",
                        description="Manage the store's schema version.")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbsub.add_parser("upgrade", help="upgrade the store's schema to this version's head",
                          description="Upgrade the store's schema to this WeightsLab's head revision.",
                          epilog="example: weightslab db upgrade --store ./store")
    _add_store(up)
    up.set_defaults(func=cmd_db_upgrade)
    cur = dbsub.add_parser("current", help="print the store's schema revision (exit 1 if not head)",
                           description="Print the store's schema revision; exit 1 if it is not this code's head.",
                           epilog="example: weightslab db current --store postgresql+psycopg://me@db/wl")
    _add_store(cur)
    cur.set_defaults(func=cmd_db_current)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``weightslab`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except WeightsLabError as e:
        print(f"weightslab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
