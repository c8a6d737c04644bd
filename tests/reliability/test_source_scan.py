"""No code path of the package unpickles, evaluates code, or builds SQL by formatting values.

The scan reads the syntax tree of every ``weightslab/**/*.py`` (comments and
docstrings cannot trigger it, aliases cannot hide a call). The only SQL text
built with an f-string is the audited statement builder of
``weightslab/history/stats.py``, which formats constant column names only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import weightslab
from weightslab.history import locate

PACKAGE = Path(weightslab.__file__).parent

# Unpickling (or equivalent) readers: never allowed.
UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
    "cloudpickle.load", "cloudpickle.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
    "pandas.read_pickle", "pd.read_pickle", "yaml.load", "yaml.unsafe_load", "jsonpickle.decode",
}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}
SQL_CALLS = {"execute", "executemany", "executescript", "exec_driver_sql", "copy", "text"}
# SQL text: an upper-case keyword (the package's style), or a statement's shape in any case.
SQL_START = re.compile(r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|COPY|TRUNCATE|WITH|BEGIN|"
                       r"EXPLAIN|VACUUM|ATTACH|GRANT|REPLACE|MERGE|VALUES)\b")
SQL_SHAPE = re.compile(r"^\s*\(?\s*(select\b.*\bfrom\b|insert\s+into\b|delete\s+from\b|update\s+\w+\s+set\b|"
                       r"(create|drop|alter)\s+(temp|temporary|table|index|schema|view|unique)\b|pragma\s+\w+)",
                       re.IGNORECASE | re.DOTALL)
# Audited: formats constant identifiers (table and column names) into the bulk upserts; values are bound.
# ui/samples.py: sort columns checked against a fixed list, the filter compiled with every value bound.
SQL_FORMAT_ALLOWED = {"history/stats.py", "ui/samples.py"}
# Audited dynamic imports: lazy package attributes, the replay tools' recipe / optimizer class, and a
# recorded training step or scheduler class (named by the user, imported like the recipe).
# cli/__init__.py imports a command module named in its fixed table of commands.
# lazy.py imports the modules the packages' constant export tables name (weightslab, events, history)
IMPORT_MODULE_ALLOWED = {"lazy.py", "cli/__init__.py", "experiment/replica.py", "experiment/training.py"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _literal_text(node: ast.AST) -> str | None:
    """The constant text a formatted-string node starts with, or None if it is not a formatted string."""
    if isinstance(node, ast.JoinedStr):
        head = node.values[0] if node.values else None
        return head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and isinstance(side.value, str):
                return side.value
            inner = _literal_text(side)
            if inner is not None:
                return inner
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str):
        return node.func.value.value
    return None


def scan(source: str, rel: str) -> list[str]:
    """Findings of one module (``rel`` is its path inside the package)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    findings: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{rel}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    findings.append(f"{where(node)} imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in UNSAFE_MODULES:
                findings.append(f"{where(node)} imports from {node.module}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, rest = name.partition(".")
            full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
            keywords = {k.arg: k.value for k in node.keywords}
            if full in UNSAFE_CALLS or name in UNSAFE_CALLS:
                findings.append(f"{where(node)} calls {full}")
            if full in ("torch.load", "torch.serialization.load"):
                wo = keywords.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    findings.append(f"{where(node)} calls torch.load without weights_only=True")
            if full in ("numpy.load", "np.load"):
                ap = keywords.get("allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True or ap is not None and not isinstance(ap, ast.Constant):
                    findings.append(f"{where(node)} calls numpy.load with allow_pickle")
            if isinstance(node.func, ast.Name) and node.func.id in CODE_BUILTINS and node.func.id not in aliases:
                findings.append(f"{where(node)} calls {node.func.id}()")
            if full in ("builtins.eval", "builtins.exec"):
                findings.append(f"{where(node)} calls {full}")
            if full == "importlib.import_module" and rel not in IMPORT_MODULE_ALLOWED:
                findings.append(f"{where(node)} imports a module named at run time")
            last = name.rsplit(".", 1)[-1]
            if last in SQL_CALLS and node.args and _literal_text(node.args[0]) is not None:
                findings.append(f"{where(node)} passes a formatted string to {last}()")
        text = _literal_text(node)
        if text is not None and (SQL_START.match(text) or SQL_SHAPE.match(text)) and rel not in SQL_FORMAT_ALLOWED:
            findings.append(f"{where(node)} builds SQL by formatting: {text[:40]!r}")
    return sorted(set(findings))


def test_the_package_never_unpickles_evaluates_or_formats_sql() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    findings = []
    for path in files:
        findings += scan(path.read_text(encoding="utf-8"), path.relative_to(PACKAGE).as_posix())
    assert findings == []


def test_the_allowlisted_sql_formats_constant_identifiers_only() -> None:
    from weightslab.history import stats

    tree = ast.parse((PACKAGE / "history/stats.py").read_text(encoding="utf-8"))
    formatted = [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]
    names = {n.id for f in formatted for v in f.values if isinstance(v, ast.FormattedValue)
             for n in ast.walk(v.value) if isinstance(n, ast.Name)}
    # only the builder's parameters and module constants: never a value from a caller
    assert names <= {"table", "cols", "source", "values", "updates", "key", "c", "columns", "_SAMPLE_ALL",
                     "_SAMPLE_KEY", "_NEURON_ALL", "_NEURON_KEY", "NEURON_COLUMNS",
                     # the PostgreSQL COPY path: its staging table, columns and types, settings, record fields
                     "_PG_STAGE", "SAMPLE_COLUMNS", "t", "k", "j"}, names
    for statement in (stats._SQLITE_SAMPLE_BULK, stats._SQLITE_SAMPLE_ONE, stats._SQLITE_NEURON_BULK,
                      stats._SQLITE_NEURON_ONE):
        # identifiers and placeholders (?, ?1, ?2) only
        assert re.fullmatch(r"(?:[A-Za-z_ ,().=:]|\?\d*)+", statement), statement[:200]
    for statement in (stats._PG_NEURON, stats._PG_NEURON_COPY, stats._PG_STAGE_CREATE, stats._PG_STAGE_COPY,
                      stats._PG_STAGE_TRUNCATE, stats._PG_SAMPLE_MERGE, stats._PG_SAMPLE_UPDATE,
                      stats._PG_SAMPLE_INSERT_NEW):
        # identifiers, placeholders (%s) and casts to constant type names (%s::integer) only
        assert re.fullmatch(r"(?:[A-Za-z_0-9 ,().=:<>]|%s)+", statement), statement[:200]
    for statement in (stats._PG_SETTINGS_READ, stats._PG_SETTINGS_SET):  # the constant setting names, quoted
        assert re.fullmatch(r"SELECT (?:[a-z_]+\('[a-z_]+'(?:, %s, true)?\)(?:, )?)+", statement), statement
    expected_pragma = f"PRAGMA busy_timeout = {locate.SQLITE_BUSY_TIMEOUT_MS}"
    assert expected_pragma == locate._BUSY_TIMEOUT_PRAGMA


BAD_SNIPPETS = [
    "import pickle\npickle.loads(b'')",
    "from pickle import loads as l\nl(b'')",
    "import torch\ntorch.load('x')",
    "import torch as t\nt.load('x', weights_only=False)",
    "eval('1')",
    "exec('x = 1')",
    "import numpy as np\nnp.load('x', allow_pickle=True)",
    "conn.execute(f\"SELECT * FROM t WHERE x = {v}\")",
    "conn.execute(text(f\"DELETE FROM t WHERE x = {v}\"))",
    "conn.exec_driver_sql('SELECT %s' % v)",
    "cur.execute('UPDATE t SET x = {}'.format(v))",
    "q = f\"INSERT INTO t VALUES ({v})\"",
    "q = 'SELECT * FROM t WHERE id = ' + str(v)",
    "q = f\"select * from t where id = {v}\"",
    "import pandas as pd\npd.read_pickle('x')",
    "import importlib\nimportlib.import_module(name)",
]


@pytest.mark.parametrize("snippet", BAD_SNIPPETS)
def test_the_scan_catches_each_forbidden_pattern(snippet: str) -> None:
    assert scan(snippet, "surgery/some_module.py"), snippet


def test_the_scan_leaves_safe_code_alone() -> None:
    safe = ("import torch\ntorch.load('x', weights_only=True)\nmodel.eval()\nconn.execute(text('SELECT 1'), p)\n"
            "msg = f'select a checkpoint {n}'\n")
    assert scan(safe, "surgery/some_module.py") == []
