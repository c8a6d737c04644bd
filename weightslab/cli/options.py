"""What every subcommand shares: ``--store``, ``--format``, and a help with a summary and examples."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

__all__ = ["EPILOG", "add_format", "add_store", "command"]

EPILOG = "The store is a directory (SQLite) or a SQLAlchemy URL; default $WEIGHTSLAB_STORE or ./store."

# What each format is for, shown in --help; the first format a command lists is its default.
_FORMATS = {
    "table": "a table for people",
    "text": "text for people",
    "json": "JSON, for programs",
    "csv": "CSV, for programs",
    "dot": "Graphviz DOT",
    "mermaid": "a Mermaid flowchart",
}
# The formats that also have a flag of their own (--json is --format json).
_SHORTHANDS = ("json", "csv", "table")


def add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="store directory or URL (default: $WEIGHTSLAB_STORE or ./store)")


def command(sub: Any, name: str, summary: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with its one-line summary, a description and examples in its --help."""
    text = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {description}".strip(), 88)
    p = sub.add_parser(name, help=summary, description=text,
                       epilog="\n".join(["example:" if len(examples) == 1 else "examples:",
                                          *(f"  {e}" for e in examples), "", EPILOG]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store(p)
    return p


def add_format(p: argparse.ArgumentParser, *formats: str) -> None:
    """``--format {formats}`` (the first is the default), and ``--json`` / ``--csv`` / ``--table`` for short.

    The parsed value is ``args.format``.
    """
    default = formats[0]
    group = p.add_mutually_exclusive_group()
    choices = ", ".join(f"{f}: {_FORMATS[f]}" for f in formats)
    group.add_argument("--format", choices=formats, default=default, metavar="{" + ",".join(formats) + "}",
                       help=f"output format ({choices}; default: {default})")
    for f in formats:
        if f in _SHORTHANDS:
            group.add_argument(f"--{f}", dest="format", action="store_const", const=f, help=f"same as --format {f}")
