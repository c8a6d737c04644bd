"""``weightslab db upgrade`` / ``db current``: :func:`weightslab.history.migrate.upgrade` and the schema revision.

These work below :class:`~weightslab.history.store.Store`, which refuses a store
at another schema revision: they open the database itself. On SQLite both run
``PRAGMA quick_check`` first, and refuse a damaged file (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_store


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="manage the store's schema version",
                        description="Manage the store's schema version.",
                        epilog="example: weightslab db upgrade --store ./store")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = actions.add_parser("upgrade", help="check the store's integrity, then upgrade its schema to this version's head",
                            description="Check the store's integrity (SQLite: PRAGMA quick_check), then upgrade "
                                        "its schema to this WeightsLab's head revision; a store that is not "
                                        "there is created. Back the store up first.",
                            epilog="example: weightslab db upgrade --store ./store")
    add_store(up)
    up.set_defaults(func=run_upgrade)
    cur = actions.add_parser("current", help="print the store's schema revision (exit 1 if not head)",
                             description="Check the store's integrity (SQLite: PRAGMA quick_check), then print its "
                                         "schema revision; exit 1 if it is not this code's head, 2 if the store "
                                         "is missing or damaged. Nothing is written.",
                             epilog="example: weightslab db current --store postgresql+psycopg://me@db/wl")
    add_store(cur)
    cur.set_defaults(func=run_current)


def run_upgrade(args: argparse.Namespace) -> int:
    from weightslab.history import migrate
    from weightslab.history.locate import make_engine, resolve_store
    from weightslab.history.store import translate_errors

    location = resolve_store(args.store)
    where = location.describe()
    with translate_errors(where):
        engine = make_engine(location)
        try:
            before, after = migrate.upgrade(engine, where)
        finally:
            engine.dispose()
    print(f"{where}: schema {before or '(empty)'} -> {after}")
    return 0


def run_current(args: argparse.Namespace) -> int:
    from weightslab.history import migrate
    from weightslab.history.locate import make_engine, require_database, resolve_store
    from weightslab.history.store import translate_errors

    location = resolve_store(args.store)
    where = location.describe()
    require_database(location)
    with translate_errors(where):
        engine = make_engine(location, read_only=True)
        try:
            migrate.check_integrity(engine, where)
            with engine.connect() as conn:
                current = migrate.current_revision(conn)
                conn.rollback()
        finally:
            engine.dispose()
    head = migrate.head_revision()
    state = "up to date" if current == head else f"this code expects {head}"
    print(f"{where}: schema {current or '(empty)'} ({state})")
    return 0 if current == head else 1
