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
        digest = s.blobs.put(b"important bytes")
        path = s.blobs.path_of(digest)
        path.write_bytes(b"important bytez")
        with pytest.raises(IntegrityError, match="damaged"):
            s.blobs.get(digest)


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
    from weightslab.history.store import Store

    with Store.open(tmp_path / "s") as s:
        for i in range(5):
            s.blobs.put(bytes([i]) * 100)
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
    if store.blobs.mode == "files":
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
