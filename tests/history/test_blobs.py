"""Content-addressed blobs and the pickle-free tensor format."""

from __future__ import annotations

import pytest
import torch

from weightslab.errors import BlobNotFoundError, IntegrityError
from weightslab.history.blobs import blob_hash
from weightslab.history.tensorcodec import MAGIC, decode_tensor, encode_tensor


def test_same_bytes_are_stored_once(store):
    h1 = store.blobs.put(b"hello")
    h2 = store.blobs.put(b"hello")
    assert h1 == h2 == blob_hash(b"hello")
    n = store.query("SELECT COUNT(*) AS n FROM blobs")["n"].iloc[0]
    assert n == 1
    assert store.blobs.get(h1) == b"hello"


def test_put_many_returns_hashes_in_order_and_dedups(store):
    with store.transaction() as conn:
        hashes = store.blobs.put_many(conn, [b"a", b"b", b"a"])
    assert hashes[0] == hashes[2] != hashes[1]
    assert store.query("SELECT COUNT(*) AS n FROM blobs")["n"].iloc[0] == 2


def test_missing_blob_is_named(store):
    missing = "0" * 64
    with pytest.raises(BlobNotFoundError, match=missing):
        store.blobs.get(missing)


def test_hostile_hash_is_refused_before_any_path_is_built(store):
    with pytest.raises(IntegrityError, match="not a blob hash"):
        store.blobs.get("../../../etc/passwd")


def test_corrupted_blob_file_is_refused(tmp_path):
    from weightslab.history.store import Store

    with Store.open(tmp_path / "s") as s:
        data = b"important bytes" * 10_000  # larger than INLINE_MAX: a file
        digest = s.blobs.put(data)
        assert s.blobs.in_file(digest)
        path = s.blobs.path_of(digest)
        path.write_bytes(data[:-1] + b"z")
        with pytest.raises(IntegrityError, match="damaged"):
            s.blobs.get(digest)


def test_small_blobs_of_a_files_store_are_database_rows_and_verified_too(tmp_path):
    from sqlalchemy import text

    from weightslab.history.blobs import INLINE_MAX
    from weightslab.history.store import Store

    with Store.open(tmp_path / "s") as s:
        small, large = b"s" * INLINE_MAX, b"l" * (INLINE_MAX + 1)
        with s.transaction() as conn:
            d_small, d_large = s.blobs.put_many(conn, [small, large])
        assert not s.blobs.in_file(d_small) and not s.blobs.path_of(d_small).exists()
        assert s.blobs.in_file(d_large) and s.blobs.path_of(d_large).read_bytes() == large
        assert s.blobs.get_many([d_large, d_small, d_large]) == [large, small, large]
        assert s.blobs.bytes_written == len(small) + len(large)
        with s.engine.begin() as conn:
            conn.execute(text("UPDATE blob_contents SET data = :d WHERE hash = :h"), {"d": b"tampered", "h": d_small})
        with pytest.raises(IntegrityError, match=f"blob {d_small} is damaged"):
            s.blobs.get_many([d_large, d_small])
        with s.engine.begin() as conn:
            conn.execute(text("DELETE FROM blob_contents WHERE hash = :h"), {"h": d_small})
        with pytest.raises(BlobNotFoundError, match=d_small):
            s.blobs.get(d_small)


def test_corrupted_blob_row_is_refused(pg_url):
    from sqlalchemy import text

    from weightslab.history.store import Store

    with Store.open(pg_url) as s:
        assert s.blobs.mode == "database"
        digest = s.blobs.put(b"important bytes")
        with s.engine.begin() as conn:
            conn.execute(text("UPDATE blob_contents SET data = :d"), {"d": b"tampered"})
        with pytest.raises(IntegrityError, match="damaged"):
            s.blobs.get(digest)


def test_no_temporary_files_left_after_writes(tmp_path):
    from weightslab.history.blobs import INLINE_MAX
    from weightslab.history.store import Store

    with Store.open(tmp_path / "s") as s:
        digests = [s.blobs.put(bytes([i]) * (INLINE_MAX + 100)) for i in range(5)]  # files, not rows
        assert all(s.blobs.path_of(d).is_file() for d in digests)
    assert list((tmp_path / "s" / "blobs" / "tmp").iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool,
                                   torch.complex64])
def test_tensor_round_trip_is_exact(dtype):
    t = (torch.arange(24) - 7).reshape(2, 3, 4).to(dtype)
    back = decode_tensor(encode_tensor(t))
    assert back.dtype == dtype and back.shape == t.shape and torch.equal(back, t)


def test_tensor_bytes_depend_only_on_dtype_shape_values():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    strided = torch.empty(4, 3).t()  # same values as base, column-major storage
    strided.copy_(base)
    assert not strided.is_contiguous()
    transposed_view = torch.arange(12, dtype=torch.float32).reshape(4, 3).t()
    assert encode_tensor(base) == encode_tensor(strided)
    assert torch.equal(decode_tensor(encode_tensor(transposed_view)), transposed_view)
    assert encode_tensor(base) != encode_tensor(base.to(torch.float64))
    assert encode_tensor(base) != encode_tensor(base.reshape(4, 3))


def test_empty_and_scalar_tensors_round_trip():
    for t in (torch.empty(0, 5), torch.tensor(3.5), torch.zeros(2, 0, dtype=torch.int64)):
        back = decode_tensor(encode_tensor(t))
        assert back.shape == t.shape and torch.equal(back, t)


@pytest.mark.parametrize("damage", [
    lambda b: b[:-1],
    lambda b: b"XXXX" + b[4:],
    lambda b: b[:8] + b'{"dtype":"object","shape":[1]}',
    lambda b: MAGIC + (10**6).to_bytes(4, "little") + b[8:],
])
def test_damaged_tensor_bytes_are_refused(damage):
    good = encode_tensor(torch.ones(3))
    with pytest.raises(IntegrityError):
        decode_tensor(damage(good))


def test_pickle_bytes_are_not_a_tensor():
    import pickle

    evil = pickle.dumps(torch.ones(2))  # what torch.save-style stores would hold
    with pytest.raises(IntegrityError, match="bad magic"):
        decode_tensor(evil)


def test_get_many_returns_every_blob_verified_and_names_a_damaged_one(store):
    """Several megabytes at once are read and verified on threads; one bad blob refuses the lot."""
    import os

    from sqlalchemy import update

    from weightslab.history.schema import BlobContent

    datas = [os.urandom(1 << 20) + bytes([i]) for i in range(6)]
    with store.transaction() as conn:
        digests = store.blobs.put_many(conn, datas)
    assert store.blobs.get_many(digests[::-1]) == datas[::-1]
    damaged = digests[4]
    if store.blobs.in_file(damaged):
        path = store.blobs.path_of(damaged)
        raw = bytearray(path.read_bytes())
        raw[100] ^= 1
        path.write_bytes(bytes(raw))
    else:
        with store.transaction() as conn:
            conn.execute(update(BlobContent).where(BlobContent.hash == damaged).values(data=b"tampered"))
    with pytest.raises(IntegrityError, match=f"blob {damaged} is damaged"):
        store.blobs.get_many(digests)
    assert store.blobs.get_many(digests[:4]) == datas[:4]


def test_a_blob_asked_for_twice_comes_back_as_two_buffers(store):
    """Tensors decode onto the buffers without a copy: two equal tensors must not share memory."""
    zeros = encode_tensor(torch.zeros(3))
    with store.transaction() as conn:
        (digest,) = store.blobs.put_many(conn, [zeros])
    a, b = (decode_tensor(x) for x in store.blobs.get_many([digest, digest]))
    a += 1
    assert torch.equal(b, torch.zeros(3)) and torch.equal(a, torch.ones(3))


def test_put_many_takes_the_hashes_a_caller_computed_and_refuses_a_wrong_count(store):
    from weightslab.history.hashing import sha256_many

    datas = [b"alpha", (b"be", b"ta")]  # a blob may come as consecutive parts
    digests = sha256_many([(datas[0],), datas[1]])
    with store.transaction() as conn:
        assert store.blobs.put_many(conn, datas, hashes=digests) == digests
    assert store.blobs.get_many(digests) == [b"alpha", b"beta"]
    with pytest.raises(ValueError, match="2 hashes for 1 blobs"), store.transaction() as conn:
        store.blobs.put_many(conn, [b"gamma"], hashes=digests)
