"""Tensors to bytes and back, without pickle.

Format ``WLT1``: the 4-byte magic, a 4-byte little-endian header length, a
canonical JSON header ``{"dtype": "float32", "shape": [2, 3]}`` padded with
spaces so that the values start at a multiple of 64 bytes, then the tensor's values as raw little-endian C-contiguous bytes. The bytes are a
function of dtype, shape and values only (no strides, no device, no storage
offset), so their SHA-256 names the tensor's content.

Format ``WLC1`` holds the same values in fewer bytes (a dump's per-sample columns and a
sampler's order: see below and docs/dumps.md). Every reader here (:func:`parse_tensor`,
:func:`decode_tensor`, :func:`decode_array`) reads both; :func:`encode_tensor` writes ``WLT1``.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
import zlib
from typing import TYPE_CHECKING, Any

from weightslab.errors import IntegrityError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["COMPACT_MAGIC", "decode_array", "decode_tensor", "encode_array", "encode_compact", "encode_tensor",
           "encode_tensor_parts", "flat_bytes", "parse_tensor"]

MAGIC = b"WLT1"
_ALIGN = 64  # the values start at a multiple of this offset
_MAX_HEADER = 4096
_MAX_DIMS = 64
_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "complex64", "complex128",
    "int64", "int32", "int16", "int8", "uint8", "bool",
)

if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
    raise ImportError("weightslab's tensor format assumes a little-endian machine")


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """Serialise a tensor (any device, any strides) to the ``WLT1`` format.

    Example:
        >>> decode_tensor(encode_tensor(torch.arange(3))).tolist()
        [0, 1, 2]
    """
    return b"".join(encode_tensor_parts(tensor))


def encode_tensor_parts(tensor: torch.Tensor) -> tuple[bytes, memoryview]:
    """``WLT1`` bytes as (header, data view): the blob store writes and hashes them without a copy."""
    import torch

    t = tensor.detach()
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"only dense tensors can be stored, got layout {t.layout}")
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype {t.dtype} cannot be stored; supported: {', '.join(_DTYPES)}")
    t = t.to("cpu").contiguous()
    data = flat_bytes(t) if t.numel() else memoryview(b"")
    return header_prefix(dtype, list(t.shape)), data


def header_prefix(dtype: str, shape: list[int]) -> bytes:
    """Magic, length and JSON header, padded with spaces to a multiple of 64 bytes.

    The padding puts the values at an aligned offset, so a blob read into a buffer
    decodes in place (no copy); it depends only on dtype and shape.
    """
    return _header_prefix(dtype, tuple(shape))


@functools.lru_cache(maxsize=4096)
def _header_prefix(dtype: str, shape: tuple[int, ...]) -> bytes:
    header = json.dumps({"dtype": dtype, "shape": shape}, separators=(",", ":"), sort_keys=True).encode("ascii")
    header += b" " * (-(8 + len(header)) % _ALIGN)
    return MAGIC + struct.pack("<I", len(header)) + header


def flat_bytes(t: torch.Tensor) -> memoryview:
    """The values of a contiguous, non-empty CPU tensor as one flat byte view (no copy).

    A one-element view may be "contiguous" with any stride (e.g. ``x[::2]`` of two
    elements), which a byte view refuses: such a tensor is re-viewed with stride 1.
    """
    import torch

    flat = t.reshape(-1)
    if flat.numel() == 1 and flat.stride(0) != 1:
        flat = flat.as_strided((1,), (1,))
    return memoryview(flat.view(torch.uint8).numpy())


def parse_tensor(blob: bytes | bytearray | memoryview) -> tuple[str, list[int], memoryview]:
    """A tensor blob's dtype name, shape and value bytes, checked: a view of a ``WLT1`` blob (not a
    copy), or the decoded values of a ``WLC1`` blob (a fresh writable buffer).

    Raises:
        IntegrityError: bad magic, malformed header, unsupported dtype or shape, undecodable values.
    """
    mv = memoryview(blob)
    if len(mv) >= 8 and bytes(mv[:4]) == COMPACT_MAGIC:
        return _parse_compact(mv)
    if len(mv) < 8 or bytes(mv[:4]) != MAGIC:
        raise IntegrityError("blob is not a WeightsLab tensor (bad magic); the store may be damaged")
    (n,) = struct.unpack("<I", mv[4:8])
    if n > _MAX_HEADER or 8 + n > len(mv):
        raise IntegrityError("tensor header length is out of bounds; the blob is damaged")
    dtype, shape = _parse_header(bytes(mv[8 : 8 + n]))
    return dtype, list(shape), mv[8 + n :]


@functools.lru_cache(maxsize=4096)
def _parse_header(raw: bytes) -> tuple[str, tuple[int, ...]]:
    """A ``WLT1`` header's dtype and shape, checked (a state's blobs repeat a few headers: parsed once each;
    an invalid header raises every time)."""
    try:
        header: Any = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also ints json cannot read
        raise IntegrityError(f"tensor header is not valid JSON: {e}") from e
    if not isinstance(header, dict) or set(header) != {"dtype", "shape"}:
        raise IntegrityError(f"tensor header has unexpected fields: {header!r}")
    dtype, shape = header["dtype"], header["shape"]
    if dtype not in _DTYPES:
        raise IntegrityError(f"tensor header names unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS \
            or not all(type(s) is int and 0 <= s < 2**63 for s in shape):  # type(): a bool is no size
        raise IntegrityError(f"tensor header has an invalid shape {str(shape)[:200]}")
    strides = 1
    for s in shape:  # torch computes strides over every dimension, zero-sized ones excepted
        strides *= max(s, 1)
    if strides >= 2**63:
        raise IntegrityError(f"tensor header has a shape too large for any tensor: {shape!r}")
    return dtype, tuple(shape)


def decode_tensor(blob: bytes | bytearray | memoryview) -> torch.Tensor:
    """Parse ``WLT1`` bytes into a new CPU tensor (no pickle, no code execution).

    Raises:
        IntegrityError: bad magic, malformed header, unsupported dtype, or a
            data length that does not match dtype × shape.
    """
    import torch

    dtype_name, shape, data = parse_tensor(blob)
    dtype = getattr(torch, dtype_name)
    numel = 1
    for s in shape:
        numel *= s
    itemsize = dtype.itemsize
    if len(data) != numel * itemsize:
        raise IntegrityError(
            f"tensor data is {len(data)} bytes, expected {numel * itemsize} for {dtype_name}{shape}; "
            "the blob is truncated or damaged"
        )
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    writable = isinstance(blob, bytearray) or (isinstance(blob, memoryview) and not blob.readonly) \
        or bytes(memoryview(blob)[:4]) == COMPACT_MAGIC  # decoded into a fresh buffer
    buffer = data if writable else bytearray(data)  # a writable buffer is shared, not copied
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    if raw.data_ptr() % itemsize:  # values must sit at aligned addresses (torch kernels assume it: a
        raw = raw.clone()  # misaligned complex128 crashes); the data follows a header of any length
    return raw.view(dtype).reshape(shape)


def encode_array(array: np.ndarray) -> bytes:
    """Serialise a numpy array through the same format (via torch.from_numpy)."""
    import numpy as np
    import torch

    arr = np.asarray(array)
    return encode_tensor(torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy()))


def decode_array(blob: bytes | memoryview) -> np.ndarray:
    """Parse ``WLT1`` bytes into a numpy array (bfloat16 is refused: numpy has none)."""
    t = decode_tensor(blob)
    if t.dtype.__repr__() == "torch.bfloat16":
        raise IntegrityError("a bfloat16 tensor cannot be returned as a numpy array")
    return t.numpy()


# ---------------------------------------------------------------------------------------------- WLC1
#
# Format ``WLC1`` (compact): the 4-byte magic, a 4-byte little-endian header length, a canonical JSON
# header ``{"codec": ..., "dtype": ..., "shape": [...], ...}``, then the codec's payload (zlib). It holds
# exactly the values of a ``WLT1`` tensor of that dtype and shape, in fewer bytes: a per-sample column
# whose values fit a narrower integer (exposure counts, predictions, labels) is stored narrowed, a
# column of few distinct values (model ages) as a dictionary and indices, a bool column as bits, floats
# with their bytes regrouped; a sampler's order as the generator state it was drawn from and the set
# of ids it permutes (regenerated with ``torch.randperm``, checked against the SHA-256 of its values).
# Decoding gives the very same values (bit for bit), so a tensor's fast digest, and any fingerprint
# built on it, is the same from either format. The blob's name stays the SHA-256 of its stored bytes.

COMPACT_MAGIC = b"WLC1"
_CODECS = ("bits", "narrow", "dict", "shuffle", "randperm")
_ZLIB_LEVEL = 1  # fast; the higher levels gain little on these columns (numbers in docs/dumps.md)
_PLANE_PROBE = 65536  # bytes of a float column's byte plane tried before compressing the whole plane
_NARROW = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64")
#: Tensors smaller than this stay ``WLT1`` (the header would eat what compression saves).
COMPACT_MIN_BYTES = 4096


def encode_compact(array: np.ndarray, *, order: bool = False,
                   order_source: tuple[np.ndarray | None, int] | None = None) -> tuple[bytes, bytes] | None:
    """``WLC1`` bytes of ``array`` as (header, payload), or None when they would not be smaller than ``WLT1``.

    ``order``: ``array`` is a sampler's order; ``order_source`` what it was drawn from, ``(generator
    state, or None for ascending ids; size of the dataset)`` (when not given, the source of an order
    this process decoded from a ``WLC1`` blob is used, if it is that order). The order is stored as
    that state and the set of ids it permutes when regenerating it gives exactly ``array``; otherwise
    it is stored like any integer column.
    """
    import numpy as np

    arr = np.ascontiguousarray(array)
    dtype = str(arr.dtype)
    if dtype not in _DTYPES or arr.nbytes < COMPACT_MIN_BYTES or arr.dtype.kind not in "biuf":
        return None
    meta: dict[str, Any] = {"dtype": dtype, "shape": list(arr.shape)}
    payload: bytes | None = None
    flat = arr.reshape(-1)
    if order and dtype == "int64" and arr.ndim == 1:
        source = order_source if order_source is not None else _known_order(flat)
        if source is not None:
            payload = _order_payload(flat, source, meta)
    if payload is None:
        meta = {"dtype": dtype, "shape": list(arr.shape)}
        if arr.dtype.kind == "b":
            meta["codec"], raw = "bits", np.packbits(flat.view(np.uint8)).tobytes()
        elif arr.dtype.kind in "iu":
            raw = _int_payload(flat, meta)
        else:
            meta.update(codec="shuffle", width=arr.dtype.itemsize)
            raw = b""
            payload = _planes(flat.view(np.uint8).reshape(-1, arr.dtype.itemsize).T, meta)
        if payload is None:
            payload = zlib.compress(raw, _ZLIB_LEVEL)
    header = _compact_header(meta)
    if len(header) + len(payload) >= len(header_prefix(dtype, list(arr.shape))) + arr.nbytes:
        return None
    return header, payload


def _planes(planes: np.ndarray, meta: dict[str, Any]) -> bytes:
    """Each byte plane of a float column (byte k of every value) compressed, or kept as it is when a probe
    of it does not compress (the low mantissa bytes: compressing them would cost time for nothing)."""
    parts, sizes = [], []
    for plane in planes:
        data = plane.tobytes()
        probe = data[:_PLANE_PROBE]
        if len(zlib.compress(probe, _ZLIB_LEVEL)) > 0.9 * len(probe):
            parts.append(data)
            sizes.append(-1)
        else:
            parts.append(zlib.compress(data, _ZLIB_LEVEL))
            sizes.append(len(parts[-1]))
    meta["planes"] = sizes
    return b"".join(parts)


def _compact_header(meta: dict[str, Any]) -> bytes:
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode("ascii")
    return COMPACT_MAGIC + struct.pack("<I", len(text)) + text


def _int_payload(flat: np.ndarray, meta: dict[str, Any]) -> bytes:
    """Integers as the narrowest type that holds them, or as a dictionary (in first-seen order) and narrow
    indices when there are few distinct values (a model age per batch)."""
    import numpy as np

    lo, hi = int(flat.min()), int(flat.max())
    stored = _narrowest(lo, hi)
    if np.dtype(stored).itemsize > 1 and len(flat) >= 65536:
        import pandas as pd  # a hash table: several times faster than np.unique's sort at 10^6 values

        index, values = pd.factorize(flat, sort=False)
        if len(values) <= 65536 and np.dtype(_narrowest(0, len(values) - 1)).itemsize < np.dtype(stored).itemsize:
            index_dtype = _narrowest(0, len(values) - 1)
            meta.update(codec="dict", values=len(values), stored=stored, index=index_dtype)
            return np.asarray(values).astype(stored).tobytes() + index.astype(index_dtype).tobytes()
    meta.update(codec="narrow", stored=stored)
    return flat.astype(stored).tobytes()


def _narrowest(lo: int, hi: int) -> str:
    import numpy as np

    for name in _NARROW:
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    return "uint64"


def _order_payload(perm: np.ndarray, source: tuple[np.ndarray | None, int], meta: dict[str, Any]) -> bytes | None:
    """The generator state and the id set of a sampler's order, if they regenerate it exactly."""
    import hashlib

    import numpy as np

    state, universe = source
    if len(perm) == 0 or perm.min() < 0 or perm.max() >= universe:
        return None
    mask = np.zeros(universe, np.bool_)
    mask[perm] = True
    state_bytes = b"" if state is None else np.ascontiguousarray(state, np.uint8).tobytes()
    ids = np.flatnonzero(mask)
    if len(ids) != len(perm) or not np.array_equal(_regenerate(ids, state_bytes), perm):
        return None
    meta.update(codec="randperm", universe=universe, state=len(state_bytes),
                sha256=hashlib.sha256(perm.data).hexdigest())
    return state_bytes + zlib.compress(np.packbits(mask.view(np.uint8)).tobytes(), _ZLIB_LEVEL)


#: The sources of the orders decoded lately (by the SHA-256 of their values): a dump after a load finds them.
_ORDERS: dict[str, tuple[np.ndarray | None, int]] = {}
_ORDERS_KEPT = 8


def _known_order(perm: np.ndarray) -> tuple[np.ndarray | None, int] | None:
    import hashlib

    return _ORDERS.get(hashlib.sha256(perm.data).hexdigest()) if _ORDERS else None


def _regenerate(ids: np.ndarray, state: bytes) -> np.ndarray:
    """``ids`` in the order ``torch.randperm`` draws from generator state ``state`` (ascending if none)."""
    import torch

    if not state:
        return ids
    generator = torch.Generator()
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return ids[torch.randperm(len(ids), generator=generator).numpy()]


def _parse_compact(mv: memoryview) -> tuple[str, list[int], memoryview]:
    """Decode a ``WLC1`` blob to (dtype, shape, a fresh writable buffer of the raw values), checked."""
    import hashlib

    import numpy as np

    (n,) = struct.unpack("<I", mv[4:8])
    if n > _MAX_HEADER or 8 + n > len(mv):
        raise IntegrityError("compact tensor header length is out of bounds; the blob is damaged")
    try:
        meta: Any = json.loads(bytes(mv[8 : 8 + n]).decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IntegrityError(f"compact tensor header is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("codec") not in _CODECS:
        raise IntegrityError(f"compact tensor header names no known codec: {str(meta)[:200]}")
    dtype, shape = meta.get("dtype"), meta.get("shape")
    if dtype not in _DTYPES or dtype == "bfloat16" or not isinstance(shape, list) or len(shape) > _MAX_DIMS \
            or not all(type(s) is int and 0 <= s < 2**40 for s in shape):
        raise IntegrityError(f"compact tensor header has an invalid dtype or shape: {str(meta)[:200]}")
    if any(meta.get(k) is not None and meta[k] not in (*_NARROW, "uint64") for k in ("stored", "index")):
        raise IntegrityError(f"compact tensor header names an invalid stored type: {str(meta)[:200]}")
    count = 1
    for s in shape:
        count *= s
    if count >= 2**40:
        raise IntegrityError(f"compact tensor header has a shape too large to hold: {shape!r}")
    body = mv[8 + n :]
    values: np.ndarray
    try:
        codec = meta["codec"]
        if codec == "randperm":
            universe, size = meta["universe"], meta["state"]
            if type(universe) is not int or type(size) is not int or not 0 <= size <= len(body) \
                    or not 0 <= universe < 2**40:
                raise ValueError("bad universe or state length")
            bits = np.frombuffer(_inflate(body[size:], -(-universe // 8)), np.uint8)
            mask = np.unpackbits(bits, count=universe).view(np.bool_)
            ids = np.flatnonzero(mask)
            if len(ids) != count:
                raise ValueError(f"{len(ids)} ids for an order of {count}")
            values = _regenerate(ids, bytes(body[:size])).astype(np.int64)
            digest = hashlib.sha256(values.data).hexdigest()
            if digest == meta.get("sha256"):
                while len(_ORDERS) >= _ORDERS_KEPT:
                    del _ORDERS[next(iter(_ORDERS))]
                _ORDERS[digest] = (np.frombuffer(bytes(body[:size]), np.uint8) if size else None, universe)
            else:
                raise IntegrityError("the sampler order regenerated from its generator state is not the one "
                                     "stored (another torch version draws another order?); the checkpoint "
                                     "cannot be loaded exactly here")
        else:
            target = np.dtype(dtype)
            if codec == "bits":
                raw = _inflate(body, -(-count // 8))
                values = np.unpackbits(np.frombuffer(raw, np.uint8), count=count).view(np.bool_)
            elif codec == "narrow":
                stored = np.dtype(meta["stored"])
                values = np.frombuffer(_inflate(body, count * stored.itemsize), stored).astype(target)
            elif codec == "dict":
                k, stored, index = meta["values"], np.dtype(meta["stored"]), np.dtype(meta["index"])
                if type(k) is not int or not 0 < k <= 65536:
                    raise ValueError(f"a dictionary of {k!r} values")
                raw = _inflate(body, k * stored.itemsize + count * index.itemsize)
                table = np.frombuffer(raw, stored, count=k).astype(target)
                values = table[np.frombuffer(raw, index, offset=k * stored.itemsize)]
            else:  # shuffle: the byte planes, each compressed (its size) or kept (-1)
                width, sizes = target.itemsize, meta.get("planes")
                if meta.get("width") != width or not isinstance(sizes, list) or len(sizes) != width \
                        or not all(type(z) is int and z >= -1 for z in sizes):
                    raise ValueError("the byte planes do not match the dtype")
                planes, at = [], 0
                for z in sizes:
                    plane = body[at:at + (count if z < 0 else z)]
                    at += len(plane)
                    if z < 0 and len(plane) != count:
                        raise ValueError("a byte plane is cut short")
                    planes.append(bytes(plane) if z < 0 else _inflate(plane, count))
                if at != len(body):
                    raise ValueError("bytes after the last byte plane")
                values = np.frombuffer(b"".join(planes), np.uint8).reshape(width, -1).T.copy().view(target)
    except IntegrityError:
        raise
    except (zlib.error, ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:  # RuntimeError: torch
        raise IntegrityError(f"compact tensor blob cannot be decoded ({e}); the blob is damaged") from e
    values = np.ascontiguousarray(values.reshape(-1))
    if values.dtype != np.dtype(dtype) or len(values) != count:
        raise IntegrityError(f"compact tensor holds {len(values)} {values.dtype} values, expected {count} {dtype}")
    return dtype, shape, memoryview(bytearray(values.view(np.uint8).data))


def _inflate(data: memoryview, size: int) -> bytes:
    """zlib-decompress ``data``, which must hold exactly ``size`` bytes (never inflating more than that)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, size + 1)
    if len(out) != size or not inflater.eof:
        raise ValueError(f"the values take {'more' if len(out) > size else 'fewer'} bytes than {size}")
    return out
