"""SHA-256 of many buffers at once, spread over a few threads.

hashlib releases the GIL while it hashes a buffer of more than 2 KiB, so
threads hash in parallel. A checkpoint of ResNet-18 with Adam is ~135 MB in
~700 tensors: the buffers are dealt into bins of equal byte counts (largest
first, each to the lightest bin), the calling thread hashes one bin and pool
threads the others. Small inputs are hashed inline, where a thread hand-off
would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["PARALLEL_MIN_BYTES", "Parts", "balanced_map", "sha256_many"]

T = TypeVar("T")
R = TypeVar("R")

# A buffer, or consecutive buffers hashed as one (a tensor's header and its memory: no concatenation).
Parts = tuple[bytes | bytearray | memoryview, ...]

#: Below this many bytes in all, everything is hashed in the calling thread.
PARALLEL_MIN_BYTES = 4 << 20

_THREAD_PREFIX = "weightslab-hash"
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _forget_pool_after_fork() -> None:
    """A forked child inherits the pool object but none of its threads (nor a sane lock)."""
    global _lock, _pool
    _lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _executor() -> ThreadPoolExecutor:
    """The shared pool, started on first use."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_workers() - 1, thread_name_prefix=_THREAD_PREFIX)
        return _pool


def _digest(parts: Parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def balanced_map(fn: Callable[[T], R], items: Sequence[T], sizes: Sequence[int]) -> list[R]:
    """``[fn(x) for x in items]``, with the items dealt to threads in bins of equal total size.

    ``fn`` should spend its time where the GIL is released (hashing, file reads).
    The first exception raised by ``fn`` propagates once every bin has finished.
    """
    out: list[Any] = [None] * len(items)
    workers = _workers()
    nested = threading.current_thread().name.startswith(_THREAD_PREFIX)  # a pool thread must not wait on its pool
    if nested or workers < 2 or len(items) < 2 or sum(sizes) < PARALLEL_MIN_BYTES:
        for i, item in enumerate(items):
            out[i] = fn(item)
        return out
    bins: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for index in sorted(range(len(items)), key=sizes.__getitem__, reverse=True):
        lightest = loads.index(min(loads))
        bins[lightest].append(index)
        loads[lightest] += sizes[index]

    def run(indices: list[int]) -> None:
        for i in indices:
            out[i] = fn(items[i])

    futures = [_executor().submit(run, b) for b in bins[1:] if b]
    try:
        run(bins[0])
    finally:
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return out


def sha256_many(items: Sequence[Parts]) -> list[str]:
    """Hex SHA-256 of each item (its parts concatenated), in order."""
    return balanced_map(_digest, items, [sum(memoryview(p).nbytes for p in parts) for parts in items])
