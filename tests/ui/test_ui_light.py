"""The UI stays light: its pages import no torch, its package imports one way, its JavaScript ships with licences."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from cli.store_builder import build_store

import weightslab

PACKAGE = Path(weightslab.__file__).parent
UI = PACKAGE / "ui"

PROBE = """
import sys
from starlette.testclient import TestClient
from weightslab.ui.app import create_app
store = sys.argv[1]
with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
    paths = ["/", "/experiments/1", "/experiments/1/curves", "/experiments/1/lineage", "/experiments/1/checkpoints/2/diff",
             "/experiments/1/events?kind=deny", "/experiments/1/neurons", "/experiments/1/samples?where=label+in+[2]",
             "/experiments/1/samples/histogram", "/compare?id=1", "/experiments/1/poll?seq=1", "/static/app.js"]
    codes = [c.get(p).status_code for p in paths]
assert codes == [200] * len(paths), codes
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded[:5]
print("torch not imported")
"""


@pytest.fixture
def sqlite_store(tmp_path):
    built = build_store(str(tmp_path / "store"))
    built.store.close()
    return built.target


def test_pages_that_need_no_tensors_do_not_import_torch(sqlite_store):
    out = subprocess.run([sys.executable, "-c", PROBE, sqlite_store], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "torch not imported" in out.stdout


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) of every ``weightslab.*`` import of a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("weightslab"):
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("weightslab")]
    return found


def test_the_ui_reads_through_events_and_history_only_and_experiment_reaches_it_for_branches_only():
    wrong = []
    for path in sorted(UI.rglob("*.py")):
        for module, top in _imports(path):
            package = module.split(".")[1] if "." in module else ""
            lazy_recipe = path.name == "thumbnails.py" and module == "weightslab.experiment.replica" and not top
            if package not in ("events", "history", "errors", "ui") and not lazy_recipe:
                wrong.append(f"{path.name} imports {module}")
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(UI) or path.parent.name == "cli":
            continue
        wrong += [f"{path.relative_to(PACKAGE)} imports {m}" for m, _ in _imports(path)
                  if m.startswith("weightslab.ui")]
    assert wrong == []


def test_ui_package_import_does_not_pull_in_the_web_libraries():
    code = "import sys, weightslab.ui; print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_each_vendored_library_ships_pinned_with_its_licence():
    from weightslab.ui.routes import VENDOR

    for path in VENDOR.values():
        script = UI / "static" / path
        assert script.is_file() and script.stat().st_size > 10_000, path
        folder = script.parent
        assert any(folder.glob("LICENSE*")), f"{folder.name} has no licence"
        name, _, version = folder.name.rpartition("-")
        assert name and version.count(".") == 2, folder.name  # a pinned version in the folder name
