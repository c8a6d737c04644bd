"""The ``weightslab`` command: the store's tools, mirroring the Python API.

Each subcommand has a one-line summary and an example in its ``--help``, and
calls one Python function:

==============================  ===============================================
``weightslab experiments``      :func:`weightslab.history.audit.experiments_frame`
``weightslab events``           :func:`weightslab.history.audit.events_frame`
``weightslab audit``            :func:`weightslab.history.audit.audit_experiment` / ``audit_store``
``weightslab lineage``          :func:`weightslab.history.lineage.build_lineage`
``weightslab diff``             :func:`weightslab.history.diff.diff_checkpoints`
``weightslab sql``              :meth:`weightslab.history.store.Store.query`
``weightslab export``           :func:`weightslab.history.export.export_experiment`
``weightslab db upgrade``       :func:`weightslab.history.migrate.upgrade`
==============================  ===============================================

Output is for people by default; ``--json`` (and ``--csv`` for tables) for
programs. Read-only commands import no torch, never create a store that is
not there, and never write to one. Exit codes: 0 success, 1 a check failed
(``audit``, ``db current``), 2 an error (bad input, unknown name, damaged store).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightslab.errors import WeightsLabError

if TYPE_CHECKING:
    import pandas as pd

    from weightslab.history.store import Store

__all__ = ["main"]

EPILOG = "The store is a directory (SQLite) or a SQLAlchemy URL; default $WEIGHTSLAB_STORE or ./store."


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="store directory or URL (default: $WEIGHTSLAB_STORE or ./store)")


def open_existing_store(store: str | None) -> Store:
    """Open a store that must exist already (read-only commands never create one).

    Raises:
        StoreUnavailableError: no store there (no database file, or a database
            without WeightsLab's schema); an unreachable server.
        SchemaVersionError: the store's schema is older or newer than this code.
    """
    from weightslab.errors import StoreUnavailableError
    from weightslab.history import migrate
    from weightslab.history.locate import make_engine, resolve_store
    from weightslab.history.store import Store, translate_errors

    location = resolve_store(store)
    where = location.describe()
    hint = "pass --store (a directory or URL) or set $WEIGHTSLAB_STORE to a store WeightsLab has written"
    if location.backend == "sqlite" and not Path(str(location.url.database)).is_file():
        raise StoreUnavailableError(f"no store at {where} (no {Path(str(location.url.database)).name} there); {hint}")
    with translate_errors(where):
        engine = make_engine(location, read_only=True)
        try:
            with engine.connect() as conn:
                current = migrate.current_revision(conn)
                conn.rollback()
        finally:
            engine.dispose()
    if current is None:
        raise StoreUnavailableError(f"no WeightsLab store at {where}: the database has no WeightsLab schema; {hint}")
    return Store.open(store)


# -- output ------------------------------------------------------------------------------

_CELL_WIDTH = 60  # table cells are cut here; --json and --csv carry the full values


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value) or (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): (None if _is_missing(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable))


def _cell(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=_jsonable)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 1] + "…"


def render_table(frame: pd.DataFrame) -> str:
    """A plain-text table: numbers right-aligned, long cells cut (for people, not programs)."""
    if frame.empty:
        return "(no rows)" if len(frame.columns) else "(no columns)"
    headers = [str(c) for c in frame.columns]
    cells = [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [frame[c].dtype.kind in "iuf" for c in frame.columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _emit_frame(frame: pd.DataFrame, fmt: str) -> None:
    if fmt == "json":
        _print_json(_records(frame))
    elif fmt == "csv":
        from weightslab.history.export import _json_cells

        _json_cells(frame).to_csv(sys.stdout, index=False)
    else:
        print(render_table(frame))


def _add_format(p: argparse.ArgumentParser, *, csv: bool = True, table: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", dest="fmt", action="store_const", const="json", help="print JSON (for programs)")
    if csv:
        g.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="print CSV (for programs)")
    if table:
        g.add_argument("--table", dest="fmt", action="store_const", const="table",
                       help="print a table for people (the default)")
    p.set_defaults(fmt="table")


# -- read-only commands --------------------------------------------------------------------

def cmd_experiments(args: argparse.Namespace) -> int:
    from weightslab.history.audit import experiments_frame

    with open_existing_store(args.store) as store:
        frame = experiments_frame(store)
    if args.fmt == "table" and frame.empty:
        print(f"no experiments in {args.store or 'the store'}")
        return 0
    _emit_frame(frame, args.fmt)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from weightslab.history.audit import events_frame

    with open_existing_store(args.store) as store:
        frame = events_frame(store, args.name, args.from_seq, args.to_seq)
    if args.fmt == "table":
        frame = frame[["seq", "created_at", "kind", "summary", "actor", "code_version"]].rename(
            columns={"created_at": "time (UTC)", "actor": "who", "code_version": "code version"})
    _emit_frame(frame, args.fmt)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from weightslab.history.audit import audit_experiment, audit_store

    with open_existing_store(args.store) as store:
        report = audit_store(store) if args.name is None else audit_experiment(store, args.name)
    if args.fmt == "json":
        _print_json(report.to_dict())
    else:
        print(report.render_text())
    return 0 if report.ok else 1


def cmd_lineage(args: argparse.Namespace) -> int:
    from weightslab.history.lineage import build_lineage

    with open_existing_store(args.store) as store:
        exp = store.get_experiment(args.name)
        lineage = build_lineage(exp.name, store.events(exp.experiment_id))
    if args.format == "json":
        _print_json(lineage.to_dict())
    elif args.format == "dot":
        print(lineage.to_dot())
    elif args.format == "mermaid":
        print(lineage.to_mermaid())
    else:
        print(lineage.render_text())
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from weightslab.history.diff import diff_checkpoints

    with open_existing_store(args.store) as store:
        diff = diff_checkpoints(store, args.name, args.a, args.b)
    if args.fmt == "json":
        _print_json(diff.to_dict())
    else:
        print(diff.render_text())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import time

    from weightslab.experiment.replay import replay_to, replica

    with open_existing_store(args.store) as store:
        exp = replica(store, args.name, recipe=args.recipe, device=args.device)
        started = time.perf_counter()
        outcome = replay_to(exp, args.to, from_start=args.from_start)
        elapsed = time.perf_counter() - started
        exp.close()
    result = {
        "experiment": args.name, "ok": outcome.ok, "replayed": outcome.replayed,
        "not_restored": outcome.not_restored, "seconds": round(elapsed, 3),
        "divergence": None if outcome.divergence is None else {
            "seq": outcome.divergence.seq, "kind": outcome.divergence.kind, "parts": outcome.divergence.parts},
        "error": outcome.error,
    }
    if args.fmt == "json":
        _print_json(result)
    elif outcome.ok:
        first, last = outcome.replayed[0], outcome.replayed[-1]
        print(f"{args.name}: rebuilt the state at seq {last} from seq {first} ({len(outcome.replayed)} events, "
              f"{elapsed:.1f} s); every recorded fingerprint matches")
    else:
        why = outcome.divergence or outcome.error
        print(f"{args.name}: replay stopped at {why}; not restored: seqs {outcome.not_restored}")
    return 0 if outcome.ok else 1


def cmd_sql(args: argparse.Namespace) -> int:
    params = {}
    for name, value in args.param or []:
        params[name] = _param_value(value)
    with open_existing_store(args.store) as store:
        frame = store.query(args.query, params)
    if args.output:
        from weightslab.history.export import write_table

        path = write_table(frame, args.output)
        print(f"wrote {len(frame)} row(s) to {path}")
        return 0
    _emit_frame(frame, args.fmt)
    return 0


def _param_value(text: str) -> Any:
    """``--param`` values: integers and decimals as numbers, anything else as text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def cmd_export(args: argparse.Namespace) -> int:
    from weightslab.history.export import export_experiment

    with open_existing_store(args.store) as store:
        files = export_experiment(store, args.name, args.outdir)
    for f in files:
        print(f"wrote {f.path} ({f.rows} rows)")
    return 0


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


def _command(sub: Any, name: str, summary: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, a description and examples in its --help."""
    text = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {description}".strip(), 88)
    p = sub.add_parser(name, help=summary, description=text,
                       epilog="\n".join(["example:" if len(examples) == 1 else "examples:",
                                          *(f"  {e}" for e in examples), "", EPILOG]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_store(p)
    return p


def _add_experiments(sub: Any) -> None:
    p = _command(sub, "experiments", "list the experiments of a store",
                 "One row per experiment: id, name, creation time, number of events and checkpoints.",
                 ["weightslab experiments --store ./store", "weightslab experiments --json"])
    _add_format(p)
    p.set_defaults(func=cmd_experiments)


def _add_events(sub: Any) -> None:
    p = _command(sub, "events", "list an experiment's events: seq, time, kind, summary, who, code version",
                 "Who is user@host; code version is the weightslab version and the git revision of the "
                 "user's working tree. --json and --csv add the hashes and payloads.",
                 ["weightslab events x0 --from 10 --to 20", "weightslab events x0 --csv > events.csv"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--from", dest="from_seq", type=int, metavar="SEQ", help="first seq to list (default 1)")
    p.add_argument("--to", dest="to_seq", type=int, metavar="SEQ", help="last seq to list (default: the last)")
    _add_format(p)
    p.set_defaults(func=cmd_events)


def _add_audit(sub: Any) -> None:
    p = _command(sub, "audit", "verify hash chains and blobs; exit 1 naming the first bad seq or blob",
                 "Checks that every event's hash covers its content and its predecessor (an edited, "
                 "deleted or reordered event breaks the chain), and that every manifest, tensor and "
                 "snapshot blob the history names exists and matches its hash. Without NAME, audits "
                 "every experiment of the store. Exit 0: all verified; 1: tampered or damaged.",
                 ["weightslab audit x0", "weightslab audit --all --json --store postgresql+psycopg://me@db/wl"])
    target = p.add_mutually_exclusive_group()
    target.add_argument("name", metavar="NAME", nargs="?", default=None, help="experiment name")
    target.add_argument("--all", action="store_true", help="audit every experiment (the default without NAME)")
    _add_format(p, csv=False)
    p.set_defaults(func=cmd_audit)


def _add_lineage(sub: Any) -> None:
    p = _command(sub, "lineage", "print an experiment's checkpoint tree (text, Graphviz DOT, Mermaid or JSON)",
                 "The text form is what print(exp.chkpt_manager) shows.",
                 ["weightslab lineage x0", "weightslab lineage x0 --format dot | dot -Tpng > lineage.png"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--format", choices=["text", "dot", "mermaid", "json"], default="text",
                   help="output format (default: text)")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.set_defaults(func=cmd_lineage)


def _add_diff(sub: Any) -> None:
    p = _command(sub, "diff", "compare two checkpoints: events between them, tensors, architecture, deny lists",
                 "Lists the events from the checkpoints' common ancestor to each, the tensors whose "
                 "content differs (by hash), the change of neurons per layer, and per split the samples "
                 "newly denied or allowed from A to B.",
                 ["weightslab diff x0 1 2", "weightslab diff x0 0 3 --json"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("a", metavar="A", type=int, help="checkpoint id (from)")
    p.add_argument("b", metavar="B", type=int, help="checkpoint id (to)")
    _add_format(p, csv=False)
    p.set_defaults(func=cmd_diff)


def _add_replay(sub: Any) -> None:
    p = _command(sub, "replay", "rebuild an experiment's state at a seq and verify every recorded fingerprint",
                 "Restores the nearest recorded state at or before the seq (creation or checkpoint), then "
                 "re-executes the later events (training re-run deterministically) and checks each event's "
                 "state fingerprint; on divergence, names the first diverging seq and which part of the state "
                 "(model, optim, ledger, sampler, rng) differs. The model and data come from the recipe the "
                 "experiment recorded (Experiment(..., recipe='package.module:function')) or --recipe. "
                 "Nothing is written to the store.",
                 ["weightslab replay digits-demo-20261126-120000",
                  "weightslab replay x0 --to 42 --from-start --recipe mypkg.recipes:mnist --json"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--to", type=int, default=None, metavar="SEQ", help="event seq to rebuild (default: the last)")
    p.add_argument("--from-start", action="store_true", help="replay from the creation, not the nearest checkpoint")
    p.add_argument("--recipe", default=None, help="'package.module:function' returning (model, train, eval)")
    p.add_argument("--device", default="cpu", help="device to replay on (bit-exactness is promised on CPU)")
    _add_format(p, csv=False)
    p.set_defaults(func=cmd_replay)


def _add_sql(sub: Any) -> None:
    p = _command(sub, "sql", "run one read-only SQL query against a store",
                 "Only one SELECT / WITH / VALUES / TABLE / EXPLAIN / SHOW statement runs, in a read-only "
                 "transaction; any write is refused. Bind values with --param NAME VALUE and :NAME.",
                 ['weightslab sql "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind"',
                  'weightslab sql "SELECT * FROM sample_stats WHERE experiment_id = :e" -p e 1 '
                  "--output stats.parquet"])
    p.add_argument("query", metavar="SQL", help="the query")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="bind :NAME to VALUE (numbers are passed as numbers); repeatable")
    p.add_argument("--output", metavar="FILE", help="write the result to FILE.csv or FILE.parquet instead")
    _add_format(p, table=True)
    p.set_defaults(func=cmd_sql)


def _add_export(sub: Any) -> None:
    p = _command(sub, "export", "write an experiment's events, statistics and sample history as Parquet",
                 "Writes events.parquet, sample_stats.parquet, neuron_stats.parquet and "
                 "sample_history.parquet (all sample_history snapshots, concatenated) into OUTDIR, "
                 "created if needed.",
                 ["weightslab export x0 ./x0-export"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("outdir", metavar="OUTDIR", help="directory to write the Parquet files to")
    p.set_defaults(func=cmd_export)


def _add_db(sub: Any) -> None:
    db = sub.add_parser("db", help="manage the store's schema version",
                        description="Manage the store's schema version.",
                        epilog="example: weightslab db upgrade --store ./store")
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


# The subcommands, in the order --help lists them: each adds its parser and sets func=cmd_*.
_COMMANDS = (_add_experiments, _add_events, _add_audit, _add_lineage, _add_diff, _add_replay, _add_sql,
             _add_export, _add_db)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightslab", description="WeightsLab: inspect, audit and replay recorded experiments.",
        epilog="example: weightslab experiments --store ./store\n\n" + EPILOG
               + "\nRun 'weightslab COMMAND --help' for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
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
    except BrokenPipeError:  # e.g. `weightslab events x0 | head`: the reader has gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
