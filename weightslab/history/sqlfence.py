"""The read-only SQL fence of ``Store.query`` (``exp.sql``, ``weightslab sql``).

A user's SQL runs only if it is exactly one query statement (SELECT, WITH,
VALUES, TABLE, EXPLAIN, SHOW), split with a small lexer that knows quotes,
comments and PostgreSQL dollar quoting; it then runs in a read-only
transaction (PostgreSQL: as a prepared statement, which the protocol limits to
one statement; SQLite: ``PRAGMA query_only`` on a read-only engine) that is
always rolled back. Database refusals come back as clear errors.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, text

from weightslab.errors import ConfigurationError

__all__ = ["READ_ONLY_HINT", "query_error", "run_prepared", "single_read_statement"]

_READ_KEYWORDS = ("select", "with", "values", "table", "explain", "show")
READ_ONLY_HINT = ("the SQL tool is read-only: it runs one SELECT, WITH, VALUES, TABLE, EXPLAIN or SHOW "
                   "statement (the store changes only through WeightsLab).")


def single_read_statement(sql: str, backend: str) -> str:
    """``sql`` as one query statement (trailing ``;`` dropped), else ConfigurationError."""
    if not isinstance(sql, str):
        raise ConfigurationError(f"the query must be a string of SQL, got {type(sql).__name__}")
    statements = _split_sql(sql, postgres=backend == "postgresql")
    if not statements:
        raise ConfigurationError("the query is empty; give one SELECT statement")
    if len(statements) > 1:
        raise ConfigurationError(
            f"refused: the query holds {len(statements)} statements; {READ_ONLY_HINT} "
            "Run the queries one at a time."
        )
    keyword = _first_keyword(statements[0])
    if keyword not in _READ_KEYWORDS:
        raise ConfigurationError(f"refused: {keyword.upper() or statements[0][:20]!r} is not a query; "
                                 f"{READ_ONLY_HINT}")
    return statements[0]


def _split_sql(sql: str, *, postgres: bool) -> list[str]:
    """Split ``sql`` at the semicolons that are outside strings, quoted names and comments.

    Statements holding only whitespace and comments are dropped. PostgreSQL's
    escape strings (``E'\\''``), dollar quotes and nested comments are understood;
    whatever this lexer gets wrong, the database's own one-statement rule still holds.
    """
    out: list[str] = []
    start = i = 0
    n = len(sql)
    closers = {"'": "'", '"': '"'} if postgres else {"'": "'", '"': '"', "`": "`", "[": "]"}
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i, nested=postgres)
        elif c in closers:
            escapes = postgres and c == "'" and i > 0 and sql[i - 1] in "eE" and (
                i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] in "_$"))
            i = _skip_quoted(sql, i, closers[c], backslash=escapes)
        elif postgres and c == "$" and (m := _DOLLAR_TAG.match(sql, i)) and not (
                i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            j = sql.find(m.group(0), m.end())
            i = n if j < 0 else j + len(m.group(0))
        elif c == ";":
            out.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    out.append(sql[start:])
    return [s.strip() for s in out if _strip_comments(s).strip()]


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


def _skip_block_comment(sql: str, i: int, *, nested: bool) -> int:
    depth, i = 1, i + 2
    while i < len(sql) and depth:
        if nested and sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _skip_quoted(sql: str, i: int, closer: str, *, backslash: bool) -> int:
    i += 1
    while i < len(sql):
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == closer:
            if closer in "'\"`" and sql.startswith(closer * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


def _strip_comments(sql: str) -> str:
    """``sql`` from its first token on (leading whitespace, comments and parentheses skipped)."""
    i = 0
    while i < len(sql):
        if sql[i].isspace() or sql[i] == "(":
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = len(sql) if j < 0 else j + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i, nested=True)
        else:
            break
    return sql[i:]


def _first_keyword(sql: str) -> str:
    m = re.match(r"[A-Za-z]+", _strip_comments(sql))
    return m.group(0).lower() if m else ""


def run_prepared(conn: Connection, statement: str, params: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """Run ``statement`` on PostgreSQL as a prepared statement (one statement, by protocol)."""
    compiled = text(statement).compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None
    values = compiled.construct_params(params)
    driver_error = conn.dialect.loaded_dbapi.Error
    with driver.cursor() as cur:
        try:
            cur.execute(compiled.string, values, prepare=True)
        except driver_error as e:  # the driver's own error: not wrapped by SQLAlchemy here
            raise query_error(e) from e
        if cur.description is None:
            raise ConfigurationError(f"refused: {statement[:60]!r} returns no rows; {READ_ONLY_HINT}")
        return [d.name for d in cur.description], cur.fetchall()


def query_error(orig: BaseException | None) -> ConfigurationError:
    text_ = str(orig).strip()
    message = text_.splitlines()[0] if text_ else type(orig).__name__
    lowered = message.lower()
    if "read-only" in lowered or "readonly" in lowered or "read only" in lowered:
        return ConfigurationError(f"refused: the query tried to write ({message}); {READ_ONLY_HINT}")
    if "multiple commands" in lowered or "one statement at a time" in lowered:
        return ConfigurationError(f"refused: the query holds several statements ({message}); {READ_ONLY_HINT}")
    return ConfigurationError(f"the query failed: {message}")
