"""The samples page's filter: a ``deny_samples_where`` expression, run by the database.

``ds.deny_samples_where("prediction_loss > 1.5 and label in [3, 5]")`` evaluates a
pandas query expression over the ledger's columns. The UI filters 10^6 rows of
``sample_stats`` per request, so it translates the same expression into a SQL
condition with bound values instead of loading the rows into pandas.

The language (that of pandas' ``DataFrame.query`` over these columns):

- columns: ``sample_id``, ``prediction_age``, ``prediction_loss``, ``exposure_amount``,
  ``deny_listed``, ``prediction``, ``label``;
- numbers, ``True``/``False``; ``+ - * / %`` and unary minus;
- comparisons ``== != < <= > >=``, chained (``0.5 < prediction_loss <= 2``);
- ``in`` / ``not in`` a list of numbers; ``and or not`` and ``& | ~``; parentheses.

Missing values follow pandas: a never-seen sample's loss and age are NaN, so
``prediction_loss <= 1.5`` is False for it and ``prediction_loss != 1.5`` True;
``prediction`` and ``label`` are nullable integers (``<NA>``), which propagate
through ``and``/``or``/``not`` as SQL's NULL does, and a row whose condition is
missing does not match. Anything else (names, calls, strings, ``**``, ``//``,
``@variables``) is refused with the list of what is allowed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from weightslab.errors import ConfigurationError

__all__ = ["COLUMNS", "MAX_LENGTH", "SqlCondition", "to_sql"]

#: The columns an expression may name, and how pandas holds them: NaN floats, nullable ints, plain.
COLUMNS = {
    "sample_id": "int",
    "prediction_age": "float",
    "prediction_loss": "float",
    "exposure_amount": "int",
    "deny_listed": "bool",
    "prediction": "nullable",
    "label": "nullable",
}
MAX_LENGTH = 1000  # characters of an expression
_MAX_NODES = 400

_COMPARE = {ast.Eq: "=", ast.NotEq: "<>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ARITHMETIC = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Mod: "%"}
_HELP = ("write a condition over the columns " + ", ".join(COLUMNS) + " with numbers, + - * / %, "
         "== != < <= > >=, in [..], and/or/not (& | ~), e.g. 'prediction_loss > 1.5 and label in [3, 5]'")


@dataclass(frozen=True)
class SqlCondition:
    """A SQL condition (its column names are the whitelisted ones) and its bound values."""

    sql: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Term:
    sql: str
    kind: str  # "bool" (a condition) or "value"
    nulls: str  # what a missing input gives: "none" (never missing), "nan" (numpy: False), "na" (Kleene)


def to_sql(expression: str, prefix: str = "f") -> SqlCondition:
    """Translate a ``deny_samples_where`` expression into a SQL condition (see the module docstring).

    Args:
        expression: the pandas query expression.
        prefix: the prefix of the bind parameters' names (``:f0``, ``:f1``, …).

    Raises:
        ConfigurationError: not a condition in the language above (the message says what is allowed).

    Example:
        >>> c = to_sql("prediction_loss > 1.5 and label in [3, 5]")
        >>> c.sql, c.params
        ('(COALESCE(prediction_loss > :f0, FALSE) AND COALESCE(label IN (:f1, :f2), FALSE))', {'f0': 1.5, 'f1': 3, 'f2': 5})
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"the filter must be a non-empty expression; {_HELP}")
    if len(expression) > MAX_LENGTH:
        raise ConfigurationError(f"the filter is {len(expression)} characters long, at most {MAX_LENGTH} are read")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConfigurationError(f"the filter {_clip(expression)} is not an expression ({e.__class__.__name__}); "
                                 f"{_HELP}") from e
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise ConfigurationError(f"the filter has more than {_MAX_NODES} parts; write a shorter one")
    translator = _Translator(prefix)
    term = translator.visit(tree.body)
    if term.kind != "bool":
        raise ConfigurationError(f"the filter {_clip(expression)} gives a number per sample, not True/False: "
                                 f"compare it, e.g. '{expression.strip()[:60]} > 0'")
    return SqlCondition(term.sql, translator.params)


class _Translator:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def visit(self, node: ast.AST) -> _Term:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise ConfigurationError(f"the filter cannot use {_show(node)}; {_HELP}")
        return method(node)

    # -- leaves ------------------------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> _Term:
        kind = COLUMNS.get(node.id)
        if kind is None:
            raise ConfigurationError(f"unknown column {node.id!r} in the filter; the columns are "
                                     + ", ".join(COLUMNS))
        nulls = {"float": "nan", "nullable": "na"}.get(kind, "none")
        return _Term(node.id, "bool" if kind == "bool" else "value", nulls)

    def visit_Constant(self, node: ast.Constant) -> _Term:
        value = node.value
        if isinstance(value, bool):
            return _Term("TRUE" if value else "FALSE", "bool", "none")
        if isinstance(value, int | float):
            return _Term(self.bind(value), "value", "none")
        raise ConfigurationError(f"the filter cannot use the constant {value!r}: the columns are numbers; {_HELP}")

    # -- arithmetic ---------------------------------------------------------------------------------
    def visit_UnaryOp(self, node: ast.UnaryOp) -> _Term:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.Not | ast.Invert):
            _need(operand, "bool", node)
            return _Term(f"(NOT {operand.sql})", "bool", operand.nulls)
        _need(operand, "value", node)
        if isinstance(node.op, ast.USub):
            return _Term(f"(-{operand.sql})", "value", operand.nulls)
        if isinstance(node.op, ast.UAdd):
            return operand
        raise ConfigurationError(f"the filter cannot use {_show(node)}; {_HELP}")

    def visit_BinOp(self, node: ast.BinOp) -> _Term:
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.BitAnd | ast.BitOr):  # pandas' & and | of conditions
            _need(left, "bool", node)
            _need(right, "bool", node)
            word = "AND" if isinstance(node.op, ast.BitAnd) else "OR"
            return _Term(f"({left.sql} {word} {right.sql})", "bool", _worst(left, right))
        _need(left, "value", node)
        _need(right, "value", node)
        nulls = _worst(left, right)
        if isinstance(node.op, ast.Div):  # true division, as pandas; x / 0 is missing here (pandas: inf)
            return _Term(f"(({left.sql}) * 1.0 / NULLIF({right.sql}, 0))", "value", nulls)
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            raise ConfigurationError(f"the filter cannot use {_show(node)}; {_HELP}")
        return _Term(f"({left.sql} {op} {right.sql})", "value", nulls)

    # -- conditions ----------------------------------------------------------------------------------
    def visit_BoolOp(self, node: ast.BoolOp) -> _Term:
        terms = [self.visit(v) for v in node.values]
        for t in terms:
            _need(t, "bool", node)
        word = " AND " if isinstance(node.op, ast.And) else " OR "
        return _Term("(" + word.join(t.sql for t in terms) + ")", "bool", _worst(*terms))

    def visit_Compare(self, node: ast.Compare) -> _Term:
        parts: list[_Term] = []
        left = self.visit(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            if isinstance(op, ast.In | ast.NotIn):
                parts.append(self._membership(left, op, comparator))
                continue
            right = self.visit(comparator)
            sql = _COMPARE.get(type(op))
            if sql is None:
                raise ConfigurationError(f"the filter cannot use {_show(node)}; {_HELP}")
            if left.kind == "bool" or right.kind == "bool":  # deny_listed == True: booleans on both sides
                lhs, rhs = _as_bool(left, node), _as_bool(right, node)
                parts.append(_Term(f"({lhs} {sql} {rhs})", "bool", _worst(left, right)))
            else:
                parts.append(_compared(f"{left.sql} {sql} {right.sql}", sql, _worst(left, right)))
            left = right
        if len(parts) == 1:
            return parts[0]
        return _Term("(" + " AND ".join(p.sql for p in parts) + ")", "bool", _worst(*parts))

    def _membership(self, left: _Term, op: ast.cmpop, comparator: ast.AST) -> _Term:
        _need(left, "value", comparator)
        if not isinstance(comparator, ast.List | ast.Tuple | ast.Set) or not comparator.elts:
            raise ConfigurationError(f"'in' takes a list of numbers such as [3, 5], not {_show(comparator)}")
        values = []
        for element in comparator.elts:
            term = self.visit(element)
            if term.kind != "value" or not term.sql.startswith(":"):
                raise ConfigurationError(f"'in' takes a list of numbers such as [3, 5], not {_show(comparator)}")
            values.append(term.sql)
        # pandas' isin: a missing value is never in the list (False, not missing)
        inside = f"COALESCE({left.sql} IN ({', '.join(values)}), FALSE)"
        return _Term(inside if isinstance(op, ast.In) else f"(NOT {inside})", "bool", "none")


def _compared(sql: str, op: str, nulls: str) -> _Term:
    """A comparison of values: NaN compares False (True for !=) as in numpy; <NA> stays missing."""
    if nulls == "nan":
        return _Term(f"COALESCE({sql}, {'TRUE' if op == '<>' else 'FALSE'})", "bool", "none")
    return _Term(f"({sql})", "bool", nulls)


def _as_bool(term: _Term, node: ast.AST) -> str:
    if term.kind == "bool":
        return term.sql
    if term.sql.startswith(":"):  # a bound 0 or 1 compared with deny_listed: as a boolean
        return f"({term.sql} <> 0)"
    raise ConfigurationError(f"the filter compares a True/False column with a number in {_show(node)}; "
                             "write 'deny_listed' or 'not deny_listed'")


def _need(term: _Term, kind: str, node: ast.AST) -> None:
    if term.kind != kind:
        what = "a condition (True/False)" if kind == "bool" else "a number"
        raise ConfigurationError(f"the filter needs {what} in {_show(node)}; {_HELP}")


def _worst(*terms: _Term) -> str:
    kinds = {t.nulls for t in terms}
    return "na" if "na" in kinds else "nan" if "nan" in kinds else "none"


def _clip(text: str, n: int = 80) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _show(node: ast.AST) -> str:
    try:
        return _clip(ast.unparse(node))
    except Exception:  # noqa: BLE001 - only used in a message
        return type(node).__name__
