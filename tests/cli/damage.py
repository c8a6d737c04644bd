"""Real damage and real limits for store tests: overwritten SQLite pages, PostgreSQL roles that may only read."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url


def overwrite_page(db: Path, table: str, *, offset: int = 0, length: int | None = None) -> None:
    """Overwrite the root page of ``table`` (or ``length`` bytes of it from ``offset``) with garbage, as a bad
    disk or a bad copy would. The store must be closed: its WAL is folded into the file first."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        row = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        root = 1 if table == "sqlite_master" else row[0]  # page 1: the file header and the schema
    finally:
        conn.close()
    size = page_size - offset if length is None else length
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size + offset)
        f.write(bytes([0xDE, 0xAD, 0xBE, 0xEF]) * (size // 4) + b"\xff" * (size % 4))


def overstate_first_cell(db: Path, table: str) -> None:
    """Make the first row of ``table``'s root page claim more bytes than the page holds (one byte changed):
    damage that ``PRAGMA quick_check`` reports as rows instead of failing outright."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    finally:
        conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size + 8)  # a leaf table page: an 8-byte header, then the cell pointers
        cell = int.from_bytes(f.read(2), "big")
        f.seek((root - 1) * page_size + cell)
        f.write(b"\x7f")  # the cell's payload length: 127 bytes, past the end of the page


def _psql(url: str, *statements: str) -> None:
    import psycopg

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database,
                         autocommit=True) as c:
        for s in statements:
            c.execute(s)


@contextmanager
def reader_role(pg_url: str, grants: tuple[str, ...] | None = None) -> Iterator[str]:
    """A real PostgreSQL role (not a superuser) that may only read the schema of ``pg_url``; yields its URL.

    ``grants`` replaces the default GRANTs (``{role}``, ``{schema}`` and ``{database}`` are filled in).
    """
    url = make_url(pg_url)
    schema = url.query["options"].split("search_path=")[1]
    role = f"wl_reader_{uuid.uuid4().hex[:10]}"
    names = {"role": role, "schema": schema, "database": url.database}
    default = ("CREATE ROLE {role} LOGIN", "GRANT CONNECT ON DATABASE {database} TO {role}",
               "GRANT USAGE ON SCHEMA {schema} TO {role}", "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    _psql(pg_url, *(g.format(**names) for g in (grants or default)))
    try:
        yield url.set(username=role).render_as_string(hide_password=False)
    finally:
        _psql(pg_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
