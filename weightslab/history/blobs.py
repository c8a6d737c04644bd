"""Content-addressed blobs: the key is the SHA-256 of the bytes.

Two homes for the bytes, one interface:

- ``files``: ``<root>/blobs/ab/abcdef...`` beside the SQLite database (the local
  default). A blob is written to a temporary file, fsynced, then renamed into
  place, so a crash never leaves a file whose bytes do not match its name.
  Blobs of at most :data:`INLINE_MAX` bytes (a small model's tensors, manifests,
  RNG states, snapshots of small tables) are rows of ``blob_contents`` instead:
  they commit with the event that names them, without a file, an fsync and a
  rename each.
- ``database``: the ``blob_contents`` table (PostgreSQL's default), so every
  machine that reaches the database reaches the blobs.

Either way the ``blobs`` table registers (hash, size). Writing the same bytes
twice stores them once. Reads verify the hash and refuse damaged bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, select

from weightslab.errors import BlobNotFoundError, IntegrityError, StoreError
from weightslab.history.dialect import insert_ignore
from weightslab.history.hashing import balanced_map, sha256_many
from weightslab.history.locate import READS_OPTION
from weightslab.history.schema import Blob, BlobContent

__all__ = ["BlobStore", "blob_hash", "check_hash"]

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")

#: In a files store, blobs of at most this many bytes are kept in the database (``blob_contents``).
#: SQLite reads and writes blobs this small faster than the file system does, and a dump of a small
#: model then costs one transaction instead of a file, an fsync and a rename per tensor.
INLINE_MAX = 64 * 1024

# Statements built once (an expanding IN list is bound per call): a dump or load reads and checks
# blobs on every call, and building the statement each time cost more than running it.
_KNOWN = select(Blob.__table__.c.hash).where(Blob.__table__.c.hash.in_(bindparam("hashes", expanding=True)))
_ROWS = select(BlobContent.__table__.c.hash, BlobContent.__table__.c.data).where(
    BlobContent.__table__.c.hash.in_(bindparam("hashes", expanding=True)))


# A blob's bytes, whole or as consecutive parts (a header and a tensor's memory: no concatenation copy).
BlobData = bytes | bytearray | memoryview | tuple[bytes | bytearray | memoryview, ...]


def _parts(data: BlobData) -> tuple[bytes | bytearray | memoryview, ...]:
    return data if isinstance(data, tuple) else (data,)


def _size(data: BlobData) -> int:
    return sum(memoryview(p).nbytes for p in _parts(data))


def blob_hash(data: BlobData) -> str:
    """SHA-256 hex digest: the name of ``data`` (its parts concatenated) in the store."""
    h = hashlib.sha256()
    for part in _parts(data):
        h.update(part)
    return h.hexdigest()


def _verify(digest: str, data: bytes | bytearray) -> None:
    actual = blob_hash(data)
    if actual != digest:
        raise IntegrityError(
            f"blob {digest} is damaged: its bytes hash to {actual}. Refusing to use it; "
            "restore the file from a backup or load an earlier checkpoint."
        )


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

    def _reading(self) -> Connection:
        """A connection for reads only (on SQLite: a deferred BEGIN, no write lock)."""
        return self._engine.connect().execution_options(**{READS_OPTION: True})

    def sweep_temporary(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files a killed writer left in ``blobs/tmp``; returns how many.

        Only files older than ``older_than_s`` go: a writer in another process may be
        filling a fresh one right now. Best effort: a file that cannot be removed stays.
        """
        if self._dir is None:
            return 0
        tmp_dir = self._dir / "tmp"
        cutoff = time.time() - older_than_s
        removed = 0
        try:
            entries = list(os.scandir(tmp_dir))
        except OSError:  # no tmp folder yet (or unreadable): nothing to sweep
            return 0
        for entry in entries:
            try:
                if entry.name.endswith(".part") and entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed

    def path_of(self, digest: str) -> Path | None:
        """Where blob ``digest``'s file is (or would be) in a files store, else None.

        Small blobs are rows of ``blob_contents`` even in a files store: see :meth:`in_file`.
        """
        if self._dir is None:
            return None
        check_hash(digest)
        return self._dir / digest[:2] / digest

    def put_many(self, conn: Connection, datas: Iterable[BlobData], *,
                 hashes: Sequence[str] | None = None) -> list[str]:
        """Store blobs within the caller's transaction; returns their hashes in order.

        Bytes already in the store are not written again. ``hashes``: the blobs' names
        as :func:`~weightslab.history.hashing.sha256_many` computed them from these very
        parts (a caller that needed them first), so they are not hashed twice.
        """
        datas = list(datas)
        if hashes is None:
            hashes = sha256_many([_parts(d) for d in datas])
        elif len(hashes) != len(datas):
            raise ValueError(f"put_many got {len(hashes)} hashes for {len(datas)} blobs")
        hashes = list(hashes)
        new: dict[str, BlobData] = {}
        for digest, data in zip(hashes, datas):
            new.setdefault(digest, data)
        if not new:
            return hashes
        known = set(conn.scalars(_KNOWN, {"hashes": list(new)}))
        now = datetime.now(UTC)
        todo = {h: d for h, d in new.items() if h not in known}
        rows = todo
        if self._dir is not None:
            files = {h: d for h, d in todo.items() if _size(d) > INLINE_MAX}
            if files:
                self._write_files(files)
            rows = {h: d for h, d in todo.items() if h not in files}
        insert_ignore(conn, Blob, [{"hash": h, "size": _size(d), "created_at": now} for h, d in todo.items()])
        self.bytes_written += sum(_size(d) for d in todo.values())
        insert_ignore(conn, BlobContent, [{"hash": h, "data": b"".join(_parts(d))} for h, d in rows.items()])
        return hashes

    def put(self, data: BlobData) -> str:
        """Store one blob in its own transaction; returns its hash."""
        with self._engine.begin() as conn:
            return self.put_many(conn, [data])[0]

    def known(self, conn: Connection, digest: str) -> bool:
        """Whether the store has blob ``digest`` (as seen by ``conn``'s transaction)."""
        return conn.scalar(select(Blob.size).where(Blob.hash == digest)) is not None

    def exists(self, digest: str) -> bool:
        check_hash(digest)
        with self._reading() as conn:
            return self.known(conn, digest)

    def get(self, digest: str, conn: Connection | None = None) -> bytes | bytearray:
        """Read a blob and verify its bytes against its name.

        Raises:
            BlobNotFoundError: no such blob (the message names it).
            IntegrityError: the bytes do not hash to the name (the store is damaged).
        """
        return self.get_many([digest], conn)[0]

    def get_many(self, digests: Sequence[str], conn: Connection | None = None) -> list[bytes | bytearray]:
        """Read blobs and verify each one's bytes against its name (hashed on a few threads).

        Raises:
            BlobNotFoundError: a blob is missing (the message names it).
            IntegrityError: a blob's bytes do not hash to its name (the store is damaged).
        """
        digests = [check_hash(d) for d in digests]
        if not digests:
            return []
        if conn is None:
            with self._reading() as c:
                rows = self._read_rows(c, digests)
        else:
            rows = self._read_rows(conn, digests)
        missing = [d for d in dict.fromkeys(digests) if d not in rows]
        if missing and self._dir is None:
            raise BlobNotFoundError(f"blob {missing[0]} is missing from the database store")
        inline = list(rows.items())
        for (digest, data), actual in zip(inline, sha256_many([(d,) for _, d in inline])):
            if actual != digest:
                _verify(digest, data)  # raises, naming the damaged blob
        if missing:  # each thread reads and verifies its share of the files
            rows.update(zip(missing, balanced_map(self._read_file, missing, [self._file_size(d) for d in missing])))
        # Buffers are writable (tensors decode onto them without a copy), so a blob asked for twice
        # (two zero tensors, say) comes back as two buffers: decoded tensors never share memory.
        out: list[bytes | bytearray] = []
        handed: set[str] = set()
        for d in digests:
            out.append(bytearray(rows[d]) if d in handed else rows[d])
            handed.add(d)
        return out

    def in_file(self, digest: str) -> bool:
        """Whether blob ``digest`` is a file under ``blobs/`` (not a row of ``blob_contents``)."""
        check_hash(digest)
        if self._dir is None:
            return False
        with self._reading() as conn:
            return conn.scalar(select(BlobContent.hash).where(BlobContent.hash == digest)) is None

    def _file_size(self, digest: str) -> int:
        try:
            return os.stat(self._file_of(digest)).st_size
        except OSError:  # missing: reading it says so
            return 0

    def _file_of(self, digest: str) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, digest[:2], digest)

    def _read_file(self, digest: str) -> bytearray:
        path = self._file_of(digest)
        try:
            with open(path, "rb") as f:  # into a writable buffer: tensors decode without a copy
                data = bytearray(os.fstat(f.fileno()).st_size)
                f.readinto(data)
        except FileNotFoundError as e:
            raise BlobNotFoundError(
                f"blob {digest} is missing from {self._dir}; the store is incomplete "
                "(restore it from a backup, or replay from an earlier checkpoint)"
            ) from e
        except OSError as e:
            raise StoreError(f"cannot read blob {digest} at {path}: {e}") from e
        _verify(digest, data)
        return data

    def _read_rows(self, conn: Connection, digests: list[str]) -> dict[str, bytes | bytearray]:
        """The blobs among ``digests`` that are rows of ``blob_contents`` (unverified)."""
        found: dict[str, bytes | bytearray] = {}
        unique = list(dict.fromkeys(digests))
        for start in range(0, len(unique), 500):  # bounded IN lists
            chunk = unique[start:start + 500]
            for h, raw in conn.execute(_ROWS, {"hashes": chunk}):
                found[h] = bytearray(raw)  # writable: tensors decode without a copy
        return found

    def _write_files(self, blobs: dict[str, BlobData]) -> None:
        """Write blobs atomically: all to temporary files, fsync them, then rename into place.

        Syncing after all writes (not one by one) lets the disk coalesce the flushes;
        a crash at any point leaves only complete files under final names.
        """
        assert self._dir is not None
        tmp_dir = self._dir / "tmp"
        staged: list[tuple[Path, Path]] = []
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            for digest, data in blobs.items():
                path = self.path_of(digest)
                assert path is not None
                if path.exists() and path.stat().st_size == _size(data):
                    continue
                tmp = tmp_dir / f"{digest}.{uuid.uuid4().hex}.part"
                staged.append((tmp, path))  # before the write: a write that fails half-way is cleaned up too
                with open(tmp, "wb") as f:
                    for part in _parts(data):
                        f.write(part)
            for tmp, _ in staged:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            parents = set()
            for tmp, path in staged:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
                parents.add(path.parent)
            for parent in parents:
                fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except BaseException as e:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise StoreError(f"cannot write blobs under {self._dir} ({e.strerror or e}): check that the disk "
                                 "has room and the directory is writable; nothing was stored") from e
            raise
