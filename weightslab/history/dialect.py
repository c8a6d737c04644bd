"""The few statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["dialect_insert", "insert_ignore"]


def dialect_insert(conn: Connection, model: Any) -> Any:
    """``INSERT`` construct of the connection's dialect (for ON CONFLICT clauses)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def insert_ignore(conn: Connection, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, skipping those whose primary key exists already."""
    if rows:
        conn.execute(dialect_insert(conn, model).on_conflict_do_nothing(), list(rows))
