"""The read-only commands answer at once: they import only what they use (no pandas, Alembic or torch),
and opening an up-to-date store reads its schema revision without Alembic.

How long they take is measured by tools/bench_cli.py (``tools/bench.py --only cli_startup``), as a ratio
to ``python -c pass``; here only what is deterministic: which modules a command loads.
"""

from __future__ import annotations

import json

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from cli_helpers import run_cli
from sqlalchemy import text
from store_builder import NAME, build_store

from weightslab.history import migrate
from weightslab.history.locate import make_engine, resolve_store

# What each read-only command must not import: the heavy libraries only other commands (or the
# Python API) need. `audit` reads tensors (numpy) to recompute a dump's digests; the others do not.
NOT_LOADED = ("torch", "pandas", "pyarrow", "alembic", "sklearn")
COMMANDS = {
    "experiments": ["experiments"],
    "experiments --json": ["experiments", "--json"],
    "events": ["events", NAME],
    "events --csv": ["events", NAME, "--csv"],
    "lineage": ["lineage", NAME],
    "audit": ["audit", NAME],
    "audit --all": ["audit"],
    "sql": ["sql", "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind"],
    "sql --json": ["sql", "SELECT seq, kind FROM events", "--json"],
}
PROBE = """
import json, sys
from weightslab.cli import main
code = main(json.loads(sys.argv[1]))
heavy = json.loads(sys.argv[2])
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(heavy))}),
      file=sys.stderr)
"""


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    built = build_store(str(tmp_path_factory.mktemp("startup") / "store"))
    built.store.close()
    return built.target


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_command_imports_no_pandas_alembic_or_torch(sqlite_store, command):
    out = run_cli(json.dumps([*COMMANDS[command], "--store", sqlite_store]), json.dumps(NOT_LOADED), code=PROBE)
    result = json.loads(out.stderr.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}, out.stderr
    assert out.stdout.strip()  # it printed its answer


def test_experiments_imports_only_its_own_command_module(sqlite_store):
    """The other subcommands' modules (and the event classes `request` lists) are not loaded."""
    out = run_cli(sqlite_store, code="import sys\nfrom weightslab.cli import main\n"
                                      "main(['experiments', '--store', sys.argv[1]])\n"
                                      "print(sorted(m for m in sys.modules if m.startswith('weightslab.cli.')"
                                      " or m == 'weightslab.events.domain'), file=sys.stderr)")
    assert out.stderr.strip().splitlines()[-1] == "['weightslab.cli.experiments', 'weightslab.cli.options', " \
                                                  "'weightslab.cli.output']", out.stderr


def test_the_head_revision_read_from_the_scripts_is_alembics():
    assert migrate.head_revision() == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


def test_the_stamped_revision_read_directly_is_alembics(store_target):
    migrate.ensure_schema(engine := make_engine(resolve_store(store_target)), store_target)
    try:
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == MigrationContext.configure(conn).get_current_revision()
            assert migrate.current_revision(conn) == migrate.head_revision()
            conn.rollback()
    finally:
        engine.dispose()


def test_a_database_never_migrated_has_no_revision(tmp_path):
    engine = make_engine(resolve_store(str(tmp_path / "empty")))
    try:
        with engine.connect() as conn:
            assert migrate.current_revision(conn) is None
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            assert migrate.current_revision(conn) is None  # the table, but no stamp yet
            conn.rollback()
    finally:
        engine.dispose()
