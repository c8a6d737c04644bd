"""The compact tensor format (``WLC1``): the same values as ``WLT1``, bit for bit, in fewer bytes; a
sampler's order regenerated from its generator state; damaged blobs refused; Parquet snapshots
encoded per column and read back equal."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightslab.errors import IntegrityError
from weightslab.history.diff import decode_numpy
from weightslab.history.fasthash import encoded_tensor_digest
from weightslab.history.manifest import FORMAT, FORMAT_COMPACT, encode_manifest, parse_manifest
from weightslab.history.snapshots import parquet_bytes, read_parquet_bytes
from weightslab.history.tensorcodec import (
    COMPACT_MAGIC,
    decode_array,
    decode_tensor,
    encode_compact,
    encode_tensor,
)

N = 70_000  # above the size at which integer columns are tried as a dictionary


def _columns() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    perm = rng.permutation(N)
    age = np.empty(N, np.int64)
    age[perm] = np.arange(N) // 512 * 512
    loss = (-np.log(rng.random(N)) * 0.3).astype(np.float32)
    loss[:3] = [np.nan, -0.0, np.inf]
    loss[3] = np.frombuffer(struct.pack("<I", 0x7FC00001), np.float32)[0]  # a NaN with another payload
    return {
        "age (dictionary)": age,
        "loss (shuffled float32)": loss,
        "float64": rng.standard_normal(N),
        "exposure (narrowed)": np.ones(N, np.int32),
        "prediction (narrowed)": rng.integers(0, 10, N).astype(np.int32),
        "negative int16 range": rng.integers(-3000, 3000, N).astype(np.int64),
        "extremes": np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max] * (N // 2), np.int64),
        "deny (bits)": rng.random(N) < 0.1,
        "2-d": rng.integers(0, 3, (N // 10, 10)).astype(np.int32),
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", list(_columns()))
def test_a_compact_blob_decodes_to_the_same_bits_and_digest_as_wlt1(name):
    values = _columns()[name]
    parts = encode_compact(values)
    assert parts is not None
    blob = b"".join(parts)
    legacy = encode_tensor(torch.from_numpy(values))
    assert blob[:4] == COMPACT_MAGIC and len(blob) < len(legacy)
    assert _same(decode_tensor(blob).numpy(), values)
    assert _same(decode_array(blob), values)
    assert _same(decode_numpy(blob), values)  # the torch-free reader (diff) too
    assert encoded_tensor_digest(blob) == encoded_tensor_digest(legacy)  # fingerprints do not see the format
    assert b"".join(encode_compact(values)) == blob  # deterministic: the same values, the same blob name


def test_sizes_of_the_per_sample_columns_at_the_dtypes_the_ledger_keeps():
    cols = _columns()
    size = {k: len(b"".join(encode_compact(cols[k]))) / N for k in cols}
    assert size["exposure (narrowed)"] < 0.05 and size["deny (bits)"] < 0.15
    assert size["age (dictionary)"] < 2.0  # 8 bytes in memory
    assert size["prediction (narrowed)"] < 1.0  # 4 bytes in memory
    assert size["loss (shuffled float32)"] < 4.0


def test_small_or_incompressible_tensors_stay_wlt1():
    assert encode_compact(np.arange(10, dtype=np.int64)) is None  # the header would cost more
    noise = np.random.default_rng(1).integers(0, 256, 100_000).astype(np.uint8)
    assert encode_compact(noise) is None  # nothing to gain
    assert encode_compact(np.zeros((0,), np.float32)) is None


def _order(n: int, universe: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An order drawn as LedgerSampler draws it, and the generator state it was drawn from."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(universe, n, replace=False)).astype(np.int64)
    g = torch.Generator()
    g.manual_seed(seed)
    torch.randperm(7, generator=g)  # not a fresh generator: an earlier epoch drew from it
    state = g.get_state().numpy().copy()
    return ids[torch.randperm(n, generator=g).numpy()], state


def test_an_order_is_stored_as_its_generator_state_and_id_set():
    perm, state = _order(60_000, 100_000, 3)
    blob = b"".join(encode_compact(perm, order=True, order_source=(state, 100_000)))
    assert len(blob) < 20_000  # the state (5 KB) and a bitmap of the ids, vs 480 KB of int64
    assert json.loads(blob[8:8 + struct.unpack("<I", blob[4:8])[0]])["codec"] == "randperm"
    assert _same(decode_tensor(blob).numpy(), perm)
    ascending = np.flatnonzero(np.random.default_rng(4).random(100_000) < 0.5)
    blob = b"".join(encode_compact(ascending, order=True, order_source=(None, 100_000)))
    assert len(blob) < 15_000 and _same(decode_array(blob), ascending)


def test_an_order_its_source_does_not_regenerate_is_stored_as_numbers():
    perm, state = _order(60_000, 100_000, 3)
    other, _ = _order(60_000, 100_000, 5)
    for values, source in ((other, (state, 100_000)), (perm, (state, 50_000)), (perm[::-1].copy(), (state, 100_000))):
        blob = b"".join(encode_compact(values, order=True, order_source=source))
        assert b'"randperm"' not in blob
        assert _same(decode_array(blob), values)


def test_a_decoded_order_is_found_again_without_its_source():
    perm, state = _order(60_000, 100_000, 6)
    blob = b"".join(encode_compact(perm, order=True, order_source=(state, 100_000)))
    decoded = decode_array(blob)  # as a load does
    assert b"".join(encode_compact(decoded.copy(), order=True)) == blob  # a dump after the load: the same blob


def test_an_order_that_regenerates_differently_is_refused():
    perm, state = _order(60_000, 100_000, 7)
    header, payload = encode_compact(perm, order=True, order_source=(state, 100_000))
    meta = json.loads(header[8:])
    meta["sha256"] = hashlib.sha256(b"another order").hexdigest()  # e.g. another torch draws another order
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    with pytest.raises(IntegrityError, match="regenerated"):
        decode_tensor(COMPACT_MAGIC + struct.pack("<I", len(text)) + text + payload)


def _compact(meta: dict, payload: bytes) -> bytes:
    text = json.dumps(meta).encode()
    return COMPACT_MAGIC + struct.pack("<I", len(text)) + text + payload


@pytest.mark.parametrize("blob", [
    COMPACT_MAGIC + b"\xff\xff\x00\x00{}",
    _compact({"codec": "zip", "dtype": "int32", "shape": [2]}, b""),
    _compact({"codec": "narrow", "dtype": "int32", "shape": [4], "stored": "uint8"}, b"not zlib"),
    _compact({"codec": "narrow", "dtype": "int32", "shape": [4], "stored": "uint8"}, zlib.compress(b"\0\1\2")),
    _compact({"codec": "narrow", "dtype": "int32", "shape": [2], "stored": "object"}, zlib.compress(b"\0\1")),
    _compact({"codec": "dict", "dtype": "int64", "shape": [2], "stored": "uint8", "index": "uint8", "values": 1},
             zlib.compress(b"\5\0\7")),  # index 7 outside the dictionary
    _compact({"codec": "shuffle", "dtype": "float32", "shape": [2], "width": 8}, zlib.compress(b"\0" * 8)),
    _compact({"codec": "bits", "dtype": "bool", "shape": [-1]}, zlib.compress(b"\0")),
    _compact({"codec": "randperm", "dtype": "int64", "shape": [3], "universe": 8, "state": 0, "sha256": "0"},
             zlib.compress(np.packbits(np.array([1, 1, 0, 0, 0, 0, 0, 0], np.uint8)).tobytes())),
])
def test_a_damaged_compact_blob_is_refused(blob):
    with pytest.raises(IntegrityError):
        decode_tensor(blob)
    with pytest.raises(IntegrityError):
        encoded_tensor_digest(blob)


def test_both_manifest_formats_parse_and_others_are_refused():
    h = "0" * 64
    for fmt in (FORMAT, FORMAT_COMPACT):
        assert parse_manifest(encode_manifest({"ledger/train/label": h}, {}, fmt)).format == fmt
    with pytest.raises(IntegrityError, match="weightslab.state"):
        parse_manifest(json.dumps({"format": "weightslab.state/9", "tensors": {}, "meta": {}}).encode())
    with pytest.raises(ValueError):
        encode_manifest({}, {}, "weightslab.state/9")


def test_a_snapshot_reads_back_equal_in_fewer_bytes():
    rng = np.random.default_rng(0)
    n = 50_000
    perm = rng.permutation(n)
    loss = (-np.log(rng.random(n)) * 0.3).astype(np.float32).astype(np.float64)
    loss[::97] = np.nan
    frame = pd.DataFrame({"split": "train", "sample_id": np.arange(n), "order": perm.astype(np.int32),
                          "prediction_age": (perm // 512 * 512).astype(np.float64), "prediction_loss": loss,
                          "exposure_amount": np.ones(n, np.int64), "deny_listed": rng.random(n) < 0.01,
                          "label": pd.array(rng.integers(0, 10, n), dtype="Int64")})
    data = parquet_bytes(frame)
    pd.testing.assert_frame_equal(read_parquet_bytes(data), frame)
    plain = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), plain, compression="zstd")  # as before
    assert len(data) < 0.85 * len(plain.getvalue())
    small = frame.head(10).set_index("sample_id")
    pd.testing.assert_frame_equal(read_parquet_bytes(parquet_bytes(small)), small)  # a named index kept


_SMALL = {  # one compact blob of each codec, small enough to fuzz quickly
    "bits": b"".join(encode_compact(np.random.default_rng(0).random(40_000) < 0.3)),
    "narrow": b"".join(encode_compact(np.arange(5_000, dtype=np.int32) % 7)),
    "dict": b"".join(encode_compact(np.repeat(np.arange(1_000, dtype=np.int64) * 512, 70))),
    "shuffle": b"".join(encode_compact(np.linspace(0, 1, 2_000, dtype=np.float32))),
    "randperm": b"".join(encode_compact(_order(3_000, 5_000, 1)[0], order=True,
                                        order_source=(_order(3_000, 5_000, 1)[1], 5_000))),
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_SMALL)), st.data())
def test_a_mutated_compact_blob_decodes_or_is_refused_with_integrity_error_only(codec, data):
    blob = bytearray(_SMALL[codec])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(8, len(blob))):]
    try:
        values = decode_tensor(bytes(blob))
    except IntegrityError:
        return
    assert values.numel() >= 0  # a mutation the format cannot tell (a header field's value): some tensor
