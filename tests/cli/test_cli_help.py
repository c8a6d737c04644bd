"""Every subcommand explains itself: a one-line summary and an example in its --help."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cli_helpers import run_cli

from weightslab.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line summary, parser) of every subcommand, nested ones included."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                out.append((full, summaries.get(name) or "", sub))
                out += _subcommands(sub, full + " ")
    return out


SUBCOMMANDS = _subcommands(build_parser())


def test_the_expected_subcommands_exist():
    names = {name for name, _, _ in SUBCOMMANDS}
    assert {"experiments", "events", "audit", "lineage", "diff", "sql", "export", "db", "db upgrade",
            "db current"} <= names


@pytest.mark.parametrize(("name", "summary", "parser"), SUBCOMMANDS, ids=[s[0] for s in SUBCOMMANDS])
def test_every_subcommand_has_a_one_line_summary_and_an_example(name, summary, parser):
    assert summary.strip() and "\n" not in summary, f"{name}: no one-line summary"
    text = parser.format_help()
    assert "example" in text.lower(), f"{name}: --help has no example"
    assert f"weightslab {name.split()[0]}" in text, f"{name}: the example does not show the command"


def test_help_runs_as_a_subprocess_and_lists_every_command():
    top = run_cli("--help")
    assert top.returncode == 0
    for name in ("experiments", "events", "audit", "lineage", "diff", "sql", "export", "db"):
        assert name in top.stdout
    sub = run_cli("diff", "--help")
    assert sub.returncode == 0 and "example" in sub.stdout and "weightslab diff x0 1 2" in sub.stdout


@pytest.mark.parametrize(("name", "formats"), [
    ("experiments", "{table,json,csv}"), ("events", "{table,json,csv}"), ("sql", "{table,json,csv}"),
    ("audit", "{text,json}"), ("diff", "{text,json}"), ("replay", "{text,json}"),
    ("lineage", "{text,dot,mermaid,json}"),
])
def test_every_command_that_prints_data_has_one_format_option(name, formats):
    parser = next(p for n, _, p in SUBCOMMANDS if n == name)
    text = parser.format_help()
    assert f"--format {formats}" in text and "--json" in text


def test_the_cli_is_a_package_with_one_module_per_command():
    import weightslab.cli as cli

    package = Path(cli.__file__).parent
    modules = {p.stem for p in package.glob("*.py")}
    assert {"experiments", "events", "audit", "lineage", "diff", "replay", "sql", "export", "db"} <= modules
    assert {"options", "output", "__main__"} <= modules
