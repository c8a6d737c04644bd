"""The layout rules of the package, checked on its syntax trees (comments and docstrings cannot trip them).

- packages import one way: events ← history / surgery / ledger ← experiment ← cli, and events ← history
  ← ui ← cli (the UI reads stores; only its thumbnails import the experiment's recipe loader, lazily:
  tests/ui/test_ui_light.py holds that);
- only ``weightslab/history/`` talks SQL;
- no raw event-kind string outside the events module (``weightslab/events/domain.py``);
- nobody reaches into an ``Experiment``'s private members from outside its module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import weightslab
from weightslab.events.domain import EVENT_CLASSES

PACKAGE = Path(weightslab.__file__).parent
ROOT = PACKAGE.parent

# package → the packages it may import (besides itself and weightslab.errors / weightslab.__version__)
ALLOWED = {
    "events": set(),
    "history": {"events"},
    "surgery": {"events"},
    "ledger": {"events"},
    "experiment": {"events", "history", "surgery", "ledger"},
    "ui": {"events", "history", "experiment"},
    "cli": {"events", "history", "experiment", "ui"},
    "demo": {"experiment", "surgery", "ledger", "history", "events"},
}


def _sources(*roots: Path) -> Iterator[tuple[str, ast.Module]]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path))


def _package_of(rel: str) -> str:
    parts = Path(rel).parts  # ("weightslab", "history", "store.py")
    return parts[1].removesuffix(".py") if len(parts) > 2 or parts[1] != "__init__.py" else ""


def _imported(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module
            for alias in node.names:  # "from weightslab import Experiment" names a package too
                if node.module == "weightslab":
                    yield node, f"weightslab.{alias.name}"


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports there cost nothing at run time)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _docstrings(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


# Names of the public top-level package (lazy exports) → the package that defines them.
_EXPORTS = {name: module.split(".")[1] for name, module in weightslab._EXPORTS.items()}


def test_packages_import_one_way() -> None:
    wrong = []
    for rel, tree in _sources(PACKAGE):
        own = _package_of(rel)
        if own not in ALLOWED:
            continue
        for node, module in _imported(tree):
            if not module.startswith("weightslab."):
                continue
            target = module.split(".")[1]
            target = _EXPORTS.get(target, target)
            if target in ("errors", own) or target not in ALLOWED:
                continue
            if target not in ALLOWED[own]:
                wrong.append(f"{rel}:{node.lineno} ({own}) imports {module} ({target})")
    assert wrong == []


def test_only_the_history_package_talks_sql() -> None:
    sql_calls = {"execute", "executemany", "exec_driver_sql", "executescript"}
    on_connections = {"scalar", "scalars"}  # SQLAlchemy's, when called on something named like a connection
    wrong = []
    for rel, tree in _sources(PACKAGE):
        if rel.startswith("weightslab/history/"):
            continue
        typing_only = _type_checking_nodes(tree)
        for node, module in _imported(tree):
            if module.split(".")[0] in ("sqlalchemy", "sqlite3", "psycopg", "alembic") and id(node) not in typing_only:
                wrong.append(f"{rel}:{node.lineno} imports {module}")
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            if node.func.attr in sql_calls or node.func.attr in on_connections and "conn" in receiver:
                wrong.append(f"{rel}:{node.lineno} calls {receiver}.{node.func.attr}()")
    assert wrong == []


def test_no_raw_event_kind_outside_the_events_module() -> None:
    kinds = set(EVENT_CLASSES)
    split_names = {"train", "eval"}  # also the names of the two data splits
    wrong = []
    for rel, tree in _sources(PACKAGE):
        if rel == "weightslab/events/domain.py":
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):  # x.kind == "train", kind in ("dump", "load")
                sides = [node.left, *node.comparators]
                names_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind"
                                 or isinstance(s, ast.Name) and s.id == "kind" for s in sides)
                literals = [c.value for s in sides for c in ast.walk(s)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                if names_kind and any(v in kinds for v in literals):
                    wrong.append(f"{rel}:{node.lineno} compares a kind with a literal")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                    and node.value in kinds - split_names:
                wrong.append(f"{rel}:{node.lineno} spells the event kind {node.value!r}")
    assert wrong == []


def _experiment_private_names() -> set[str]:
    tree = ast.parse((PACKAGE / "experiment" / "experiment.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Experiment")
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def test_nobody_touches_an_experiments_private_members_from_outside() -> None:
    private = _experiment_private_names()
    assert {"_rt", "_recorder"} <= private  # the scan sees the members it guards
    wrong = []
    for rel, tree in _sources(PACKAGE, ROOT / "tests", ROOT / "tools"):
        if rel == "weightslab/experiment/experiment.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                wrong.append(f"{rel}:{node.lineno} reads .{node.attr}")
    assert wrong == []


@pytest.mark.parametrize("source, found", [
    ("if e.kind == 'dump': pass", True),
    ("x = 'reinit_neurons'", True),
    ("split = 'train'", False),
    ('def f():\n    """deny or allow"""\n', False),
])
def test_the_kind_scan_finds_what_it_should(source: str, found: bool, tmp_path: Path, monkeypatch) -> None:
    module = tmp_path / "weightslab" / "probe.py"
    module.parent.mkdir()
    module.write_text(source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", module.parent)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    if found:
        with pytest.raises(AssertionError):
            test_no_raw_event_kind_outside_the_events_module()
    else:
        test_no_raw_event_kind_outside_the_events_module()
