"""SHA-256 of many buffers on a few threads: the same digests as hashing them one by one."""

from __future__ import annotations

import hashlib
import multiprocessing
import os

import pytest

from weightslab.history.hashing import PARALLEL_MIN_BYTES, balanced_map, sha256_many


def _items(sizes: list[int]) -> list[tuple[bytes, ...]]:
    return [(os.urandom(n // 2), os.urandom(n - n // 2)) for n in sizes]


@pytest.mark.parametrize("sizes", [
    [0, 1, 2048, 5000],  # little in all: hashed inline
    [3 << 20, 1, 2 << 20, 7, 1 << 20, 0, 4096, 512 << 10],  # over the threshold: dealt to threads
])
def test_sha256_many_gives_each_items_digest_in_order(sizes):
    items = _items(sizes)
    expected = [hashlib.sha256(b"".join(parts)).hexdigest() for parts in items]
    assert sha256_many(items) == expected
    assert (sum(sizes) >= PARALLEL_MIN_BYTES) == (sizes[0] > 1 << 20)


def test_balanced_map_keeps_the_order_and_raises_the_first_error():
    sizes = [PARALLEL_MIN_BYTES] * 6
    assert balanced_map(lambda i: i * i, list(range(6)), sizes) == [0, 1, 4, 9, 16, 25]

    def fail_on_three(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    with pytest.raises(ValueError, match="item 3 is bad"):
        balanced_map(fail_on_three, list(range(6)), sizes)


def _hash_in_child(conn) -> None:
    data = (b"x" * PARALLEL_MIN_BYTES, b"y" * 10)
    conn.send(sha256_many([data, data]))
    conn.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_a_forked_child_hashes_on_threads_of_its_own():
    sha256_many(_items([PARALLEL_MIN_BYTES, PARALLEL_MIN_BYTES]))  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_hash_in_child, args=(child,))
    proc.start()
    assert parent.poll(60), "the forked child did not answer (a pool inherited without threads hangs)"
    digests = parent.recv()
    proc.join(10)
    expected = hashlib.sha256(b"x" * PARALLEL_MIN_BYTES + b"y" * 10).hexdigest()
    assert digests == [expected, expected]


def test_hashing_from_inside_a_hashing_thread_does_not_wait_on_its_own_pool():
    import threading

    big = (b"z" * PARALLEL_MIN_BYTES,)
    expected = hashlib.sha256(big[0]).hexdigest()
    result: list[list[list[str]]] = []

    def nested() -> None:
        result.append(balanced_map(lambda _: sha256_many([big, big]), [0, 1, 2], [PARALLEL_MIN_BYTES] * 3))

    worker = threading.Thread(target=nested, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "nested hashing deadlocked"
    assert result == [[[expected, expected]] * 3]
