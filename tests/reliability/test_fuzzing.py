"""Property-based tests (hypothesis) of the three formats the store is made of.

- the event payload codec: canonical JSON, normalisation and the chain hash;
- the checkpoint manifest parser: ``parse_manifest`` on valid, mutated and random input;
- the tensor format ``WLT1``: every supported dtype and shape (empty and
  non-contiguous included) round-trips bit-exactly, and no byte string makes the
  decoder fail with anything but IntegrityError.

Settings are modest (``max_examples`` 100–200, no deadline) so the suite stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import struct
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from weightslab.errors import EventPayloadError, IntegrityError
from weightslab.events.codec import canonical_json, chain_hash, decode_payload, normalise
from weightslab.experiment.state import tensor_hash
from weightslab.history import manifest as manifest_format
from weightslab.history.store import Store
from weightslab.history.tensorcodec import MAGIC, decode_tensor, encode_tensor

FAST = settings(max_examples=150, deadline=None)

# ----------------------------------------------------------------------------- the event payload codec

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(text, inner, max_size=5), max_leaves=25)
payloads = st.dictionaries(text, json_values, max_size=6)


def _reversed(value: Any) -> Any:
    """The same value with every dict's insertion order reversed."""
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed(v) for v in value]
    return value


@FAST
@given(payloads)
def test_canonical_json_round_trips_and_is_stable(payload):
    text_ = canonical_json(payload)
    back = json.loads(text_)
    assert back == normalise(payload)
    assert canonical_json(back) == text_  # a stored payload hashes as it did when written
    assert canonical_json(_reversed(payload)) == text_  # key order never matters
    assert decode_payload(text_) == back


@FAST
@given(payloads, st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)))
def test_the_chain_hash_is_a_function_of_content_and_predecessor(payload, prev):
    fields = {"seq": 1, "kind": "train", "payload": normalise(payload)}
    digest = chain_hash(fields, prev)
    assert len(digest) == 64 and digest == chain_hash(json.loads(json.dumps(fields)), prev)
    assert chain_hash({**fields, "seq": 2}, prev) != digest
    assert chain_hash(fields, "f" * 64 if prev != "f" * 64 else "e" * 64) != digest
    changed = {**fields, "payload": {**fields["payload"], "\u2603extra": 1}}
    assert chain_hash(changed, prev) != digest


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_normalise_to_what_jsonb_gives_back(x):
    v = normalise(x)
    assert v == x
    if isinstance(v, float):
        assert not (v == 0.0 and math.copysign(1.0, v) < 0)  # no negative zero
        assert abs(v) < 1e16  # written with a fraction, so read back as a float
    else:
        assert isinstance(v, int) and abs(x) >= 1e16


@FAST
@given(payloads, st.sampled_from([math.nan, math.inf, -math.inf, object(), b"bytes", 1 + 2j, "a\x00b",
                                  "\ud800", 10**4001]))
def test_anything_that_is_not_storable_json_is_refused_with_the_key_path(payload, bad):
    payload = {**payload, "deep": {"er": [bad]}}
    with pytest.raises(EventPayloadError, match=r"payload\.deep\.er\[0\]"):
        canonical_json(payload)


@FAST
@given(st.sets(st.integers()), st.tuples(st.integers(), text))
def test_sets_and_tuples_become_lists(items, pair):
    assert normalise(items) == sorted(items)
    assert normalise(pair) == list(pair)
    with pytest.raises(EventPayloadError):
        normalise({1: "non-string key"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_payloads_survive_the_store_and_the_chain_verifies(store_target, payload):
    """The store (SQLite JSON, PostgreSQL JSONB) gives every payload back so that it hashes the same."""
    with Store.open(store_target) as store:
        exp = store.find_experiment("fuzz") or store.create_experiment("fuzz")
        row = store.append_event(exp.experiment_id, "note", payload,
                                 expected_last_seq=store.last_seq(exp.experiment_id))
        (back,) = store.events(exp.experiment_id, from_seq=row.seq, to_seq=row.seq)
        assert back.payload == normalise(payload)
        assert back.hash == row.hash
        report = store.verify_chain(exp.experiment_id)
        assert report.ok, report


# ----------------------------------------------------------------------------- the manifest parser

hashes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
tensor_names = st.builds(lambda g, n: g + n, st.sampled_from(["model/", "optim/0/", "ledger/train/",
                                                               "sampler/eval/", "rng/"]), text)
hyper = st.dictionaries(text, st.none() | st.booleans() | st.integers(-10, 10)
                        | st.floats(-1e6, 1e6) | st.lists(st.floats(0, 1), max_size=2), max_size=4)
manifests = st.fixed_dictionaries({
    "format": st.just(manifest_format.FORMAT),
    "tensors": st.dictionaries(tensor_names, hashes, max_size=8),
    "meta": st.fixed_dictionaries({
        "optimizer": st.fixed_dictionaries({
            "class": text, "param_groups": st.lists(hyper, max_size=3),
            "tuple_keys": st.lists(text, max_size=2), "scalars": st.dictionaries(text, st.integers(), max_size=3)}),
        "architecture": st.lists(st.integers(0, 1000), max_size=6),
        "model_age": st.integers(0, 2**40),
    }),
})


def parse_manifest(raw: bytes, name: str) -> dict[str, Any]:
    """The manifest as a restore reads it: parsed, its meta checked, back as a document."""
    parsed = manifest_format.parse_manifest(raw, name).check_restorable(name)
    return {"format": manifest_format.FORMAT, "tensors": parsed.tensors, "meta": parsed.meta}


def _assert_parsed_manifest(doc: dict[str, Any]) -> None:
    """What a caller of parse_manifest relies on."""
    assert doc["format"] == manifest_format.FORMAT
    for name, digest in doc["tensors"].items():
        assert name.split("/", 1)[0] in ("model", "optim", "ledger", "sampler", "rng")
        assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    opt = doc["meta"]["optimizer"]
    assert isinstance(opt["class"], str) and all(isinstance(g, dict) for g in opt["param_groups"])
    assert isinstance(doc["meta"]["model_age"], int)


@FAST
@given(manifests)
def test_a_valid_manifest_parses_to_itself(doc):
    parsed = parse_manifest(canonical_json(doc).encode(), "m")
    assert parsed == normalise(doc)
    _assert_parsed_manifest(parsed)


def _mutations(doc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A strategy of copies of ``doc`` with one part deleted or replaced by any JSON value."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(doc, ())

    def apply(path: tuple[Any, ...], replacement: Any, delete: bool) -> dict[str, Any]:
        out = copy.deepcopy(doc)
        if not path:
            return replacement
        parent = out
        for p in path[:-1]:
            parent = parent[p]
        if delete:
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
        return out

    return st.builds(apply, st.sampled_from(paths), json_values, st.booleans())


@FAST
@given(manifests.flatmap(_mutations))
def test_a_mutated_manifest_parses_correctly_or_is_refused(doc):
    try:
        parsed = parse_manifest(canonical_json(doc).encode(), "m")
    except IntegrityError:
        return
    _assert_parsed_manifest(parsed)


@FAST
@given(st.binary(max_size=300) | manifests.map(lambda d: canonical_json(d).encode()).flatmap(
    lambda b: st.builds(lambda i, x: b[:i] + bytes([x]) + b[i + 1:], st.integers(0, max(len(b) - 1, 0)),
                        st.integers(0, 255))))
def test_manifest_bytes_never_fail_with_anything_but_integrity_error(raw):
    try:
        parsed = parse_manifest(raw, "m")
    except IntegrityError:
        return
    _assert_parsed_manifest(parsed)


def test_a_deeply_nested_or_huge_manifest_is_refused() -> None:
    for raw in (b"[" * 100_000, b'{"format": 1' + b"0" * 5000 + b"}", b"\xff\xfe", b'{"format": "weightslab.state/1"}'):
        with pytest.raises(IntegrityError):
            parse_manifest(raw, "m")


# ----------------------------------------------------------------------------- the tensor format WLT1

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Any supported dtype and shape, any bit pattern (NaNs, denormals), possibly non-contiguous."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    raw = draw(st.binary(min_size=numel * itemsize, max_size=numel * itemsize))
    if dtype == torch.bool:
        raw = bytes(b & 1 for b in raw)  # a bool tensor holds 0 or 1
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape) if numel \
        else torch.empty(shape, dtype=dtype)
    view = draw(st.sampled_from(["as-is", "transposed", "strided", "offset", "expanded", "permuted"]))
    if view == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif view == "strided" and t.dim() >= 1:
        t = t[::2]
    elif view == "offset" and t.dim() >= 1:
        t = t[1:]
    elif view == "expanded":
        t = t.unsqueeze(0).expand(3, *t.shape)
    elif view == "permuted" and t.dim() >= 2:
        t = t.permute(*reversed(range(t.dim())))
    return t


def _bits(t: torch.Tensor) -> bytes:
    c = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # fresh standard strides, whatever t's were
    return c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b""


@settings(max_examples=200, deadline=None)
@given(tensors(), st.sampled_from(["bytes", "bytearray", "memoryview", "readonly-memoryview"]))
def test_every_tensor_round_trips_bit_exactly(t, container):
    blob = encode_tensor(t)
    data = {"bytes": blob, "bytearray": bytearray(blob), "memoryview": memoryview(bytearray(blob)),
            "readonly-memoryview": memoryview(blob)}[container]
    back = decode_tensor(data)
    assert back.dtype == t.dtype and back.shape == t.shape and back.is_contiguous()
    assert back.numel() == 0 or back.data_ptr() % back.element_size() == 0  # aligned, even when decoded in place
    assert _bits(back) == _bits(t)
    assert encode_tensor(back) == blob  # the bytes are a function of dtype, shape and values only
    assert tensor_hash(t) == hashlib.sha256(blob).hexdigest()  # the state fingerprint names the same blob
    if t.numel() and t.dtype.is_floating_point and t.dtype != torch.bfloat16:
        finite = torch.isfinite(t)
        assert torch.equal(back[finite], t.contiguous()[finite])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_integrity_error_only(raw):
    with contextlib.suppress(IntegrityError):  # anything else fails the test
        decode_tensor(raw)


def _framed(header: bytes, data: bytes = b"") -> bytes:
    return MAGIC + struct.pack("<I", len(header)) + header + data


@settings(max_examples=200, deadline=None)
@given(json_values | st.fixed_dictionaries({"dtype": st.sampled_from([d for d in map(str, DTYPES)] + ["float32"])
                                            .map(lambda s: s.removeprefix("torch.")),
                                            "shape": st.lists(st.integers(-3, 2**64) | st.booleans()
                                                              | st.floats(0, 4), max_size=5)}),
       st.binary(max_size=64))
def test_any_header_is_refused_with_integrity_error_or_decodes_to_what_it_says(header, data):
    framed = _framed(json.dumps(header).encode(), data)
    try:
        t = decode_tensor(framed)
    except IntegrityError:
        return
    assert isinstance(header, dict) and list(t.shape) == header["shape"]
    assert t.numel() * t.element_size() == len(data)


@settings(max_examples=150, deadline=None)
@given(tensors(), st.data())
def test_damaged_encodings_are_refused_or_decode_to_some_tensor(t, data):
    blob = bytearray(encode_tensor(t))
    how = data.draw(st.sampled_from(["truncate", "extend", "flip"]))
    if how == "truncate":
        assume(len(blob) > 0)
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    elif how == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    try:
        back = decode_tensor(bytes(blob))
    except IntegrityError:
        return
    header_len = int.from_bytes(bytes(blob[4:8]), "little")
    assert back.numel() * back.element_size() == len(blob) - 8 - header_len


def test_hostile_headers_are_refused() -> None:
    for header in (b"[" * 4000, b'{"dtype":"float32","shape":[true]}', b'{"dtype":"float32","shape":[0,1e400]}',
                   b'{"dtype":"float32","shape":[0,' + b"9" * 40 + b"]}",
                   b'{"dtype":"float32","shape":[0,4611686018427387904,4611686018427387904]}',
                   b'{"dtype":"float32","shape":[' + b",".join([b"1"] * 65) + b"]}",
                   b'{"dtype":"object","shape":[]}', b'{"dtype":["float32"],"shape":[]}',
                   b'{"dtype":"float32","shape":[],"x":1}', b'"float32"', "é".encode()):
        with pytest.raises(IntegrityError):
            decode_tensor(_framed(header))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensors_decoded_in_place_are_aligned_whatever_the_header_length(dtype) -> None:
    """Blobs are read into a bytearray and decoded in place: the values follow a header of any length."""
    for n in range(1, 40):  # header lengths (and so data offsets) of every residue
        t = torch.ones(n, 3, dtype=dtype)
        back = decode_tensor(bytearray(encode_tensor(t)))
        assert back.data_ptr() % back.element_size() == 0
        assert torch.equal(torch.empty_like(back).copy_(back), t)


@FAST
@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.floats(allow_nan=False)), max_size=8))
def test_state_hash_is_the_hash_of_the_canonical_json_of_its_map(hashes):
    """state_hash skips the general payload walk for text maps: same bytes, same refusals."""
    from weightslab.history.manifest import group_hashes, state_hash

    try:
        expected = hashlib.sha256(canonical_json(hashes).encode()).hexdigest()
    except EventPayloadError:
        with pytest.raises(EventPayloadError):
            state_hash(hashes)
        return
    assert state_hash(hashes) == expected
    named = {f"model/{k}": v for k, v in hashes.items() if isinstance(v, str)}
    assert group_hashes(named)["model"] == hashlib.sha256(canonical_json(named).encode()).hexdigest()

