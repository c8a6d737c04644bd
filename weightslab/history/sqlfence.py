"""The read-only SQL fence of ``Store.query`` (``exp.sql``, ``weightslab sql``).

What keeps a user's SQL from changing the store, the database's own
guarantees first:

1. **The connection cannot write.** SQLite: the query runs on a connection
   opened read-only (``mode=ro``), with ``PRAGMA query_only`` on top.
   PostgreSQL: in a read-only transaction (``SET TRANSACTION READ ONLY``).
   Either way the transaction is rolled back afterwards.
2. **The database runs one statement.** sqlite3 executes one statement per
   call; PostgreSQL receives the query as a prepared statement, which its
   protocol limits to one. On SQLite an authorizer also denies ATTACH and
   DETACH (a read-only connection may still create the file an ATTACH names).
3. **The text is classified before anything runs**, with sqlparse's lexer
   (strings, quoted names, comments, dollar quotes): exactly one statement,
   starting with SELECT, WITH, VALUES, TABLE, EXPLAIN or SHOW, and a WITH whose
   main statement is not a write. This gives the clear message; 1 and 2 are the
   guarantee, so a query the classifier gets wrong is refused by the database.

sqlparse lexes one SQL for every dialect, so it can split where the database
does not; each such case is a refusal of a valid query, never a write:

- a backslash before a closing quote ends a standard string in SQLite and
  PostgreSQL (``'C:\\'``), but sqlparse reads ``\\'`` as an escaped quote, so in
  ``SELECT '\\' AS a, ';' AS b`` it sees a semicolon outside the strings;
- PostgreSQL nests block comments (``/* /* */ ; */`` is one comment), sqlparse
  does not.

Beyond the fence, on PostgreSQL the role matters: a superuser can call
``pg_terminate_backend()`` or ``pg_read_file()`` inside a read-only
transaction. :func:`superuser_warning` says so and how to create a read-only role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weightslab.errors import ConfigurationError

if TYPE_CHECKING:  # SQLAlchemy where a connection is used: the direct reader classifies without it
    from sqlalchemy import Connection
    from sqlparse.sql import Statement

__all__ = ["READ_ONLY_HINT", "query_error", "run_query", "single_read_statement", "superuser_warning"]

_READ_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN", "SHOW"})
READ_ONLY_HINT = ("the SQL tool is read-only: it runs one SELECT, WITH, VALUES, TABLE, EXPLAIN or SHOW "
                  "statement (the store changes only through WeightsLab).")


def single_read_statement(sql: str) -> str:
    """``sql`` as one query statement (a final ``;`` dropped), else ConfigurationError.

    Raises:
        ConfigurationError: not a string, no statement, several statements, or a
            statement that is not a query (the message says which).

    Example:
        >>> single_read_statement("SELECT 1; -- done")
        'SELECT 1 -- done'
    """
    if not isinstance(sql, str):
        raise ConfigurationError(f"the query must be a string of SQL, got {type(sql).__name__}")
    statements = _statements(sql)
    if not statements:
        raise ConfigurationError("the query is empty; give one SELECT statement")
    if len(statements) > 1:
        raise ConfigurationError(
            f"refused: the query holds {len(statements)} statements; {READ_ONLY_HINT} "
            "Run the queries one at a time."
        )
    statement = statements[0]
    keywords = _top_level_keywords(statement)
    verb = keywords[0] if keywords else ""
    if verb not in _READ_KEYWORDS:
        raise ConfigurationError(f"refused: {verb!r} is not a query; {READ_ONLY_HINT}")
    if verb == "WITH" and len(keywords) > 1 and keywords[1] in _WRITE_VERBS:  # its main statement's verb
        raise ConfigurationError(f"refused: this WITH query ends in {keywords[1]}, a write; {READ_ONLY_HINT}")
    return _without_final_semicolon(statement)


# sqlparse's DML and DDL keywords that change data or schema (its Keyword.DML / Keyword.DDL tokens)
_WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "CREATE", "DROP", "ALTER",
                          "TRUNCATE", "CREATE OR REPLACE"})


def _statements(sql: str) -> list[Statement]:
    """The statements of ``sql`` (sqlparse's splitter), those holding only comments dropped."""
    from sqlparse import engine
    from sqlparse import tokens as T

    # The splitter without grouping: linear in the text (grouping refuses more than 10 000 tokens,
    # which a long IN list reaches), and all the classification needs.
    return [s for s in engine.FilterStack().run(sql)
            if any(not (t.is_whitespace or t.ttype in T.Comment or t.value == ";") for t in s.flatten())]


def _top_level_keywords(statement: Statement) -> list[str]:
    """The statement's first word (after any opening parentheses), then its DML/DDL keywords outside parentheses.

    ``WITH d AS (DELETE ...) SELECT ...`` gives ``[WITH, SELECT]``: the CTE bodies are in
    parentheses, so the second entry is the main statement's verb.
    """
    from sqlparse import tokens as T

    keywords: list[str] = []
    depth = 0
    for token in statement.flatten():
        if token.is_whitespace or token.ttype in T.Comment:
            continue
        if token.match(T.Punctuation, "("):
            depth += 1 if keywords else 0
        elif token.match(T.Punctuation, ")"):
            depth = max(depth - 1, 0)
        elif not keywords:
            keywords.append(token.normalized.upper() if token.is_keyword else token.value[:20])
        elif depth == 0 and token.ttype in (T.Keyword.DML, T.Keyword.DDL):
            keywords.append(token.normalized.upper())
    return keywords


def _without_final_semicolon(statement: Statement) -> str:
    from sqlparse import tokens as T

    tokens = list(statement.flatten())
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i].value == ";":
            del tokens[i]
            break
        if not (tokens[i].is_whitespace or tokens[i].ttype in T.Comment):
            break
    return "".join(t.value for t in tokens).strip()


def run_query(conn: Connection, statement: str, params: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """Run one classified query on ``conn`` (a read-only engine's) with the database's own fences.

    PostgreSQL: a read-only transaction, the query as a prepared statement (one
    statement, by protocol). SQLite: ``PRAGMA query_only`` on the read-only
    connection, sqlite3's one statement per call, and an authorizer that denies
    ATTACH and DETACH (a read-only connection may still create the file an ATTACH
    names). The caller rolls back. The PostgreSQL driver's own errors come back
    unwrapped by SQLAlchemy.

    Raises:
        ConfigurationError: the statement returns no rows.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        return _run_prepared(conn, statement, params)
    conn.exec_driver_sql("PRAGMA query_only = ON")
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.set_authorizer(_sqlite_authorizer)
    try:
        from sqlalchemy import text

        result = conn.execute(text(statement), params)
        if not result.returns_rows:
            raise ConfigurationError(f"refused: {statement[:60]!r} returns no rows; {READ_ONLY_HINT}")
        return list(result.keys()), list(result.fetchall())
    finally:
        driver.set_authorizer(None)


def _sqlite_authorizer(action: int, *_: Any) -> int:
    import sqlite3

    return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK


def _run_prepared(conn: Connection, statement: str, params: dict[str, Any]) -> tuple[list[str], list[Any]]:
    from sqlalchemy import text

    compiled = text(statement).compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None
    values = compiled.construct_params(params)
    with driver.cursor() as cur:
        cur.execute(compiled.string, values, prepare=True)
        if cur.description is None:
            raise ConfigurationError(f"refused: {statement[:60]!r} returns no rows; {READ_ONLY_HINT}")
        return [d.name for d in cur.description], cur.fetchall()


def query_error(orig: BaseException | None) -> ConfigurationError:
    """The error for a query the database refused: a write, several statements, or bad SQL."""
    text_ = str(orig).strip()
    message = text_.splitlines()[0] if text_ else type(orig).__name__
    lowered = message.lower()
    if "read-only" in lowered or "readonly" in lowered or "read only" in lowered or "not authorized" in lowered:
        return ConfigurationError(f"refused: the query tried to write ({message}); {READ_ONLY_HINT}")
    if "multiple commands" in lowered or "one statement at a time" in lowered:
        return ConfigurationError(f"refused: the query holds several statements ({message}); {READ_ONLY_HINT}")
    return ConfigurationError(f"the query failed: {message}")


_ROLE = ("SELECT rolsuper, current_user, current_database(), current_schema() "
         "FROM pg_roles WHERE rolname = current_user")


def superuser_warning(conn: Connection) -> str | None:
    """On PostgreSQL, a warning when ``conn``'s role is a superuser; None otherwise (and on SQLite).

    The fence is not a privilege boundary: inside a read-only transaction a
    superuser can still terminate other sessions or read the server's files.
    The warning gives the SQL that creates a role that can only read the store.
    """
    if conn.dialect.name != "postgresql":
        return None
    row = conn.exec_driver_sql(_ROLE).one_or_none()
    if row is None or not row[0]:
        return None
    quote = conn.dialect.identifier_preparer.quote
    role, database, schema = quote(str(row[1])), quote(str(row[2])), quote(str(row[3] or "public"))
    reader = "weightslab_reader"
    # One message (never executed: advice for the user to run as a superuser).
    return (f"the role {role} is a PostgreSQL superuser: the SQL tool's read-only transaction is not a "
            "privilege boundary for it (a superuser can still call pg_terminate_backend() or pg_read_file()). "
            "Query the store as a role that can only read it; as a superuser, create one with:\n"
            f"  CREATE ROLE {reader} LOGIN PASSWORD 'choose-a-password';\n"
            f"  GRANT CONNECT ON DATABASE {database} TO {reader};\n"
            f"  GRANT USAGE ON SCHEMA {schema} TO {reader};\n"
            f"  GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {reader};\n"
            f"  ALTER DEFAULT PRIVILEGES FOR ROLE {role} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {reader};\n"
            f"then pass --store postgresql+psycopg://{reader}:PASSWORD@HOST/DATABASE")
