"""``weightslab sql``: :meth:`weightslab.history.store.Store.query` (its rows: no pandas unless writing a file)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from weightslab.cli.options import add_format, command


def register(sub: Any) -> None:
    p = command(sub, "sql", "run one read-only SQL query against a store",
                "Only one SELECT / WITH / VALUES / TABLE / EXPLAIN / SHOW statement runs, on a connection "
                "that cannot write (SQLite opened read-only; a PostgreSQL read-only transaction); any "
                "write is refused. Bind values with --param NAME VALUE and :NAME. On PostgreSQL, use a "
                "role that can only read: a superuser gets a warning, as the read-only transaction does "
                "not bound what it can do.",
                ['weightslab sql "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind"',
                 'weightslab sql "SELECT * FROM sample_stats WHERE experiment_id = :e" -p e 1 '
                 "--output stats.parquet"])
    p.add_argument("query", metavar="SQL", help="the query")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="bind :NAME to VALUE (numbers are passed as numbers); repeatable")
    p.add_argument("--output", metavar="FILE", help="write the result to FILE.csv or FILE.parquet instead")
    add_format(p, "table", "json", "csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.cli.output import print_frame
    from weightslab.history.direct import DirectReader, open_reader
    from weightslab.history.sqlfence import single_read_statement, superuser_warning

    single_read_statement(args.query)  # refuse what is not one query before connecting (Store.query checks again)
    params = {name: param_value(value) for name, value in args.param or []}
    with open_reader(args.store) as store:
        warning = None
        if not isinstance(store, DirectReader):  # a server: is the role a superuser?
            with store.reading() as conn:
                warning = superuser_warning(conn)
        if warning:
            print(f"weightslab: warning: {warning}", file=sys.stderr)
        frame = store.query_rows(args.query, params)
    if args.output:
        from weightslab.history.export import write_table

        path = write_table(frame.to_frame(), args.output)
        print(f"wrote {len(frame)} row(s) to {path}")
        return 0
    print_frame(frame, args.format)
    return 0


def param_value(text: str) -> Any:
    """``--param`` values: integers and decimals as numbers, anything else as text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
