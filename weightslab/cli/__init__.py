"""The ``weightslab`` command: the store's tools, mirroring the Python API.

One module per subcommand holds its parser (``register``) and its function
(``run``), which calls one Python function:

==============================  ===============================================
``weightslab experiments``      :func:`weightslab.history.audit.experiments_frame`
``weightslab events``           :func:`weightslab.history.audit.events_frame`
``weightslab audit``            :func:`weightslab.history.audit.audit_experiment` / ``audit_store``
``weightslab lineage``          :meth:`weightslab.history.lineage.Lineage.of`
``weightslab diff``             :func:`weightslab.history.diff.diff_checkpoints`
``weightslab replay``           :func:`weightslab.experiment.replica.replay_to`
``weightslab request``          :meth:`weightslab.history.store.Store.file_request` / ``cancel_request``
``weightslab requests``         :meth:`weightslab.history.store.Store.list_requests`
``weightslab sql``              :meth:`weightslab.history.store.Store.query`
``weightslab export``           :func:`weightslab.history.export.export_experiment`
``weightslab db upgrade``       :func:`weightslab.history.migrate.upgrade`
``weightslab ui``               :func:`weightslab.ui.server.serve`
==============================  ===============================================

``options`` holds what they share (``--store``, ``--format``, help with
examples), ``output`` how they print. A command line imports only the module
of the command it names (``weightslab --help`` imports them all), so that
``weightslab experiments`` pays for nothing the other commands need. Output is for people by default;
``--format json`` or ``csv`` (``--json``, ``--csv`` for short) for programs.
The commands that only read open the store with
``Store.open(store, create=False, read_only=True)``: they never create a store
that is not there, never write to one, and import no torch; each imports what
it needs when it runs. Exit codes: 0 success, 1 a check failed (``audit``,
``replay``, ``db current``), 2 an error (bad input, unknown name, damaged store).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from weightslab.cli.options import EPILOG
from weightslab.errors import WeightsLabError

__all__ = ["build_parser", "main"]

# The subcommands (each the module weightslab.cli.NAME), in the order --help lists them.
_COMMANDS = ("experiments", "events", "audit", "lineage", "diff", "replay", "request", "requests", "sql", "export",
             "db", "ui")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of the ``weightslab`` command and every subcommand (``only``: just that one)."""
    parser = argparse.ArgumentParser(
        prog="weightslab", description="WeightsLab: inspect, audit and replay recorded experiments.",
        epilog="example: weightslab experiments --store ./store\n\n" + EPILOG
               + "\nRun 'weightslab COMMAND --help' for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS if only is None else (only,):
        importlib.import_module(f"weightslab.cli.{name}").register(sub)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand a command line names, when its first word is one (else the full parser is built)."""
    first = argv[0] if argv else None
    return first if first in _COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``weightslab`` console script; returns the exit code.

    Example:
        >>> main(["experiments", "--store", "./store", "--json"])
        0
    """
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_named(words))
    args = parser.parse_args(words)
    try:
        return int(args.func(args))
    except WeightsLabError as e:
        print(f"weightslab: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `weightslab events x0 | head`: the reader has gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
