"""Content-addressed blobs: the key is the SHA-256 of the bytes.

Two homes for the bytes, one interface:

- ``files``: ``<root>/blobs/ab/abcdef...`` beside the SQLite database (the local
  default). A blob is written to a temporary file, fsynced, then renamed into
  place, so a crash never leaves a file whose bytes do not match its name.
- ``database``: the ``blob_contents`` table (PostgreSQL's default), so every
  machine that reaches the database reaches the blobs.

Either way the ``blobs`` table registers (hash, size). Writing the same bytes
twice stores them once. Reads verify the hash and refuse damaged bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, select

from weightslab.errors import BlobNotFoundError, IntegrityError, StoreError
from weightslab.history.dialect import insert_ignore
from weightslab.history.schema import Blob, BlobContent

__all__ = ["BlobStore", "blob_hash", "check_hash"]

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def blob_hash(data: bytes | memoryview) -> str:
    """SHA-256 hex digest: the name of ``data`` in the store."""
    return hashlib.sha256(data).hexdigest()


def check_hash(value: object) -> str:
    """Return ``value`` if it is a well-formed blob hash, else raise IntegrityError.

    Every hash read from a manifest or payload goes through here before it is
    used to build a path, so a crafted ``../../etc/passwd`` is never followed.
    """
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise IntegrityError(f"{value!r} is not a blob hash (64 lowercase hex digits); refusing it")
    return value


class BlobStore:
    """Put and get content-addressed blobs of one store."""

    def __init__(self, engine: Engine, root: Path | None) -> None:
        self._engine = engine
        self._dir = root / "blobs" if root is not None else None
        self.mode = "files" if root is not None else "database"
        self.bytes_written = 0  # new blob bytes this process has stored (deduplicated ones excluded)

    def path_of(self, digest: str) -> Path | None:
        """The file holding a blob (files mode), else None."""
        if self._dir is None:
            return None
        check_hash(digest)
        return self._dir / digest[:2] / digest

    def put_many(self, conn: Connection, datas: Iterable[bytes]) -> list[str]:
        """Store blobs within the caller's transaction; returns their hashes in order.

        Bytes already in the store are not written again.
        """
        hashes: list[str] = []
        new: dict[str, bytes] = {}
        for data in datas:
            digest = blob_hash(data)
            hashes.append(digest)
            new.setdefault(digest, data)
        if not new:
            return hashes
        known = set(conn.scalars(select(Blob.hash).where(Blob.hash.in_(list(new)))))
        now = datetime.now(UTC)
        todo = {h: d for h, d in new.items() if h not in known}
        if self._dir is not None:
            for digest, data in todo.items():
                self._write_file(digest, data)
        insert_ignore(conn, Blob, [{"hash": h, "size": len(d), "created_at": now} for h, d in todo.items()])
        self.bytes_written += sum(len(d) for d in todo.values())
        if self._dir is None:
            insert_ignore(conn, BlobContent, [{"hash": h, "data": d} for h, d in todo.items()])
        return hashes

    def put(self, data: bytes) -> str:
        """Store one blob in its own transaction; returns its hash."""
        with self._engine.begin() as conn:
            return self.put_many(conn, [data])[0]

    def exists(self, digest: str) -> bool:
        check_hash(digest)
        with self._engine.connect() as conn:
            return conn.scalar(select(Blob.size).where(Blob.hash == digest)) is not None

    def get(self, digest: str, conn: Connection | None = None) -> bytes:
        """Read a blob and verify its bytes against its name.

        Raises:
            BlobNotFoundError: no such blob (the message names it).
            IntegrityError: the bytes do not hash to the name (the store is damaged).
        """
        check_hash(digest)
        if self._dir is not None:
            path = self.path_of(digest)
            assert path is not None
            try:
                data = path.read_bytes()
            except FileNotFoundError as e:
                raise BlobNotFoundError(
                    f"blob {digest} is missing from {self._dir}; the store is incomplete "
                    "(restore it from a backup, or replay from an earlier checkpoint)"
                ) from e
            except OSError as e:
                raise StoreError(f"cannot read blob {digest} at {path}: {e}") from e
        else:
            if conn is None:
                with self._engine.connect() as c:
                    data = c.scalar(select(BlobContent.data).where(BlobContent.hash == digest))
            else:
                data = conn.scalar(select(BlobContent.data).where(BlobContent.hash == digest))
            if data is None:
                raise BlobNotFoundError(f"blob {digest} is missing from the database store")
            data = bytes(data)
        actual = blob_hash(data)
        if actual != digest:
            raise IntegrityError(
                f"blob {digest} is damaged: its bytes hash to {actual}. Refusing to use it; "
                "restore the file from a backup or load an earlier checkpoint."
            )
        return data

    def _write_file(self, digest: str, data: bytes) -> None:
        path = self.path_of(digest)
        assert path is not None and self._dir is not None
        if path.exists() and path.stat().st_size == len(data):
            return
        tmp_dir = self._dir / "tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir.mkdir(parents=True, exist_ok=True)
            tmp = tmp_dir / f"{digest}.{uuid.uuid4().hex}.part"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StoreError(f"cannot write blob {digest} under {self._dir}: {e}") from e
