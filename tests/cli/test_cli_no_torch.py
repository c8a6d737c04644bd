"""Read-only commands stay light: running them never imports torch (STYLE practice 10)."""

from __future__ import annotations

import pytest
from cli_helpers import run_cli
from store_builder import build_store

PROBE = """
import sys
from weightslab.cli import main
store, out = sys.argv[1], sys.argv[2]
runs = [["experiments"], ["events", "x0", "--json"], ["audit"], ["audit", "x0"], ["lineage", "x0"],
        ["lineage", "x0", "--format", "dot"], ["diff", "x0", "1", "2"], ["sql", "SELECT COUNT(*) FROM events"],
        ["export", "x0", out]]
codes = [main([*r, "--store", store]) for r in runs]
assert codes == [0] * len(runs), codes
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("torch not imported")
"""


@pytest.fixture
def sqlite_store(tmp_path):
    built = build_store(str(tmp_path / "store"))
    built.store.close()
    return built.target


def test_read_only_commands_do_not_import_torch(sqlite_store, tmp_path):
    out = run_cli(sqlite_store, str(tmp_path / "export"), code=PROBE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch not imported" in out.stdout


def test_importing_the_cli_does_not_import_torch():
    out = run_cli(code="import sys, weightslab.cli, weightslab.history.audit, weightslab.history.diff, "
                       "weightslab.history.export; print('torch' in sys.modules)")
    assert out.stdout.strip() == "False", out.stderr
