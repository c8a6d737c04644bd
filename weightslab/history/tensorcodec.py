"""Tensors to bytes and back, without pickle.

Format ``WLT1``: the 4-byte magic, a 4-byte little-endian header length, a
canonical JSON header ``{"dtype": "float32", "shape": [2, 3]}`` padded with
spaces so that the values start at a multiple of 64 bytes, then the tensor's values as raw little-endian C-contiguous bytes. The bytes are a
function of dtype, shape and values only (no strides, no device, no storage
offset), so their SHA-256 names the tensor's content.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
from typing import TYPE_CHECKING, Any

from weightslab.errors import IntegrityError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["decode_array", "decode_tensor", "encode_array", "encode_tensor", "encode_tensor_parts", "flat_bytes",
           "parse_tensor"]

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
    """A ``WLT1`` blob's dtype name, shape and value bytes (a view, not a copy), checked.

    Raises:
        IntegrityError: bad magic, malformed header, unsupported dtype or shape.
    """
    mv = memoryview(blob)
    if len(mv) < 8 or bytes(mv[:4]) != MAGIC:
        raise IntegrityError("blob is not a WeightsLab tensor (bad magic); the store may be damaged")
    (n,) = struct.unpack("<I", mv[4:8])
    if n > _MAX_HEADER or 8 + n > len(mv):
        raise IntegrityError("tensor header length is out of bounds; the blob is damaged")
    try:
        header: Any = json.loads(bytes(mv[8 : 8 + n]).decode("ascii"))
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
    return dtype, shape, mv[8 + n :]


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
    writable = isinstance(blob, bytearray) or (isinstance(blob, memoryview) and not blob.readonly)
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
