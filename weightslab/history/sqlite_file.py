"""A SQLite store's file: its name, where a store is looked for, and read-only connections, without SQLAlchemy.

:mod:`weightslab.history.locate` builds engines on these; the read-only tools' direct reader
(:mod:`weightslab.history.direct`) opens the file with them alone.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from weightslab.errors import StoreUnavailableError

__all__ = ["BUSY_TIMEOUT_PRAGMA", "DB_FILENAME", "ENV_VAR", "MISSING_STORE_HINT", "MMAP_PRAGMA",
           "SQLITE_BUSY_TIMEOUT_MS", "connect_read_only"]

DB_FILENAME = "weightslab.db"
ENV_VAR = "WEIGHTSLAB_STORE"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A literal, like every SQL text of the package (no SQL is built by formatting; a test checks it equals
# SQLITE_BUSY_TIMEOUT_MS).
BUSY_TIMEOUT_PRAGMA = "PRAGMA busy_timeout = 30000"
MMAP_PRAGMA = "PRAGMA mmap_size = 268435456"  # 256 MiB

#: What to do when there is no store where one must be (the read-only commands never create one).
MISSING_STORE_HINT = ("give the directory or URL of a store WeightsLab has written (on the command line: "
                      "--store, or $WEIGHTSLAB_STORE)")

# SQLite refuses a read-only connection to a WAL database with these when it cannot create the
# -shm/-wal companions (their directory is read-only for this process and they do not exist).
_NO_WAL_INDEX = {"SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT", "SQLITE_CANTOPEN"}


def connect_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to the SQLite file ``path`` (see :func:`weightslab.history.locate.make_engine`)."""
    uri = f"file:{quote(path)}?mode=ro"

    def connect(target: str) -> sqlite3.Connection:
        return sqlite3.connect(target, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)

    conn = connect(uri)
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # opens the WAL index, if the file is in WAL mode
        return conn
    except sqlite3.OperationalError as e:
        conn.close()
        if getattr(e, "sqlite_errorname", "") not in _NO_WAL_INDEX:
            raise
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreUnavailableError(
                f"cannot read {path} read-only: its {wal.name} file holds transactions not yet in the "
                "database, and the directory is read-only for this process, so SQLite cannot open its "
                "WAL index. Open the store once as its owner (any weightslab command that writes, or "
                "Store.open) to fold them in, or copy the directory somewhere writable."
            ) from e
    return connect(f"{uri}&immutable=1")
