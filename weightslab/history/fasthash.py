"""The fast state hash: a tensor's bytes mixed with integer arithmetic, exact in any order, on any device.

Per-event fingerprints hash the whole state at every event, so they must be cheap
and computable where the tensors live (a GPU then sends back 16 bytes, not the
state). Blob addresses stay SHA-256; this hash only says whether two states are
the same.

The bytes (zero-padded to whole blocks of :data:`BLOCK` 64-bit words) are read as
int64 words ``x[b, j]``. Each of two lanes is

    lane = Σ_b p_b · (Σ_j w_j · x[b, j])   (mod 2**64)

with fixed pseudo-random odd weights ``w_j`` per position in a block and ``p_b``
per block, drawn independently for each lane (SplitMix64 of fixed seeds).
Integer sums are exact whatever the order of summation, so numpy on a CPU and
torch on a GPU give the same lanes. A flipped bit ``k`` of word ``x[b, j]``
changes a lane by ``p_b · w_j · 2**k``, which is never 0 mod 2**64 (odd times a
power of two below 2**64): every single-bit change is detected, in both lanes.
The tensor's dtype, shape and byte length are part of its digest, so zero
padding cannot hide a difference in length.

It is a checksum, not a cryptographic hash: it is linear, so changes crafted
on purpose can cancel. What an adversary cannot forge stays SHA-256: blob
addresses, the manifests that name them, and the hash chain of the events
(which includes every recorded fingerprint).

Pure numpy: the torch version for tensors on an accelerator is
:func:`weightslab.experiment.state.fast_digests`, and a test holds the two equal.
"""

from __future__ import annotations

import struct

import numpy as np

from weightslab.history.tensorcodec import parse_tensor

__all__ = ["ALGORITHM", "BLOCK", "MASK", "SMALL", "W1", "W2", "block_weights", "digest_bytes", "digest_of_lanes",
           "encoded_tensor_digest", "lanes", "lanes_of_small", "tensor_digest"]

#: The name recorded with the fingerprints that use it.
ALGORITHM = "wl-mix64x2"
#: 64-bit words per block (one block weight each).
BLOCK = 1024

MASK = 2**64 - 1
_ONE = np.uint64(1)
#: Seeds of the four weight sequences (position and block weights of each lane): fixed for good.
_SEEDS = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63)


def _odd_weights(start: int, n: int, seed: int) -> np.ndarray:
    """``n`` pseudo-random odd 64-bit weights (SplitMix64 of ``seed + i``, i from ``start``), as int64."""
    with np.errstate(over="ignore"):
        z = np.arange(start, start + n, dtype=np.uint64) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z | _ONE).view(np.int64)


#: Position weights of the two lanes, one per word of a block.
W1, W2 = _odd_weights(0, BLOCK, _SEEDS[0]), _odd_weights(0, BLOCK, _SEEDS[1])


_block_cache: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64), np.empty(0, np.int64))


def block_weights(blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The weights of the first ``blocks`` blocks in the two lanes (read-only; kept between calls)."""
    global _block_cache
    cached = _block_cache
    if len(cached[0]) < blocks:
        grown = max(blocks, 2 * len(cached[0]), 1024)
        cached = (_odd_weights(0, grown, _SEEDS[2]), _odd_weights(0, grown, _SEEDS[3]))
        for w in cached:
            w.flags.writeable = False
        _block_cache = cached  # one assignment: a thread sees the old or the new pair, both valid
    return cached[0][:blocks], cached[1][:blocks]


def lanes(data: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, int]:
    """The two 64-bit lanes of ``data``'s bytes (see the module docstring)."""
    raw = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    size = 8 * BLOCK
    blocks, rest = divmod(len(raw), size)
    p1, p2 = block_weights(blocks + (rest > 0))
    lane1 = lane2 = 0  # numpy's integer array arithmetic wraps silently: sums are exact modulo 2**64
    if blocks:
        # einsum, not ``@``: numpy's integer matmul is a plain loop, einsum's is vectorised (~2x)
        words = raw[: blocks * size].view(np.int64).reshape(blocks, BLOCK)
        lane1 = int(np.einsum("i,i->", np.einsum("ij,j->i", words, W1), p1[:blocks]))
        lane2 = int(np.einsum("i,i->", np.einsum("ij,j->i", words, W2), p2[:blocks]))
    if rest:  # the last, partial block: its missing words are zeros and add nothing
        tail = raw[blocks * size:]
        if rest % 8:
            tail = np.concatenate([tail, np.zeros(8 - rest % 8, np.uint8)])
        words = tail.view(np.int64)
        n = len(words)
        lane1 += int(np.einsum("j,j->", words, W1[:n])) * int(p1[blocks])
        lane2 += int(np.einsum("j,j->", words, W2[:n])) * int(p2[blocks])
    return lane1 & MASK, lane2 & MASK


#: The most bytes :func:`lanes_of_small` takes per item: one block.
SMALL = 8 * BLOCK


def lanes_of_small(items: list[memoryview | np.ndarray]) -> list[tuple[int, int]]:
    """:func:`lanes` of each of ``items`` (each at most :data:`SMALL` bytes), in one vectorised pass.

    A state holds many small tensors (biases, per-neuron multipliers, counters), where a call per
    tensor costs more than its bytes: here they are laid out as the zero-padded rows of one matrix,
    and each row's single block is weighted at once. The lanes are exactly :func:`lanes`'s.
    """
    if not items:
        return []
    raws = [np.frombuffer(x, dtype=np.uint8) if not isinstance(x, np.ndarray) else x.reshape(-1).view(np.uint8)
            for x in items]
    if max(len(r) for r in raws) > SMALL:
        raise ValueError(f"lanes_of_small takes items of at most {SMALL} bytes")
    n = -(-max(len(r) for r in raws) // 8) or 1
    matrix = np.zeros((len(raws), 8 * n), dtype=np.uint8)
    for row, raw in zip(matrix, raws):
        row[: len(raw)] = raw
    words = matrix.view(np.int64)
    sums1, sums2 = np.einsum("ij,j->i", words, W1[:n]).tolist(), np.einsum("ij,j->i", words, W2[:n]).tolist()
    p1, p2 = block_weights(1)
    b1, b2 = int(p1[0]), int(p2[0])
    return [((s1 * b1) & MASK, (s2 * b2) & MASK) if len(raw) else (0, 0)
            for s1, s2, raw in zip(sums1, sums2, raws)]


def digest_of_lanes(lane1: int, lane2: int) -> str:
    """Two lanes as 32 hex digits."""
    return struct.pack("<QQ", lane1 & MASK, lane2 & MASK).hex()


def digest_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> str:
    """The lanes of ``data`` as 32 hex digits."""
    return digest_of_lanes(*lanes(data))


def tensor_digest(dtype: str, shape: list[int] | tuple[int, ...], nbytes: int, hex_lanes: str) -> str:
    """A tensor's digest: its dtype name (as WLT1 writes it), shape, byte length and lanes."""
    return f"{ALGORITHM}:{dtype}:{'x'.join(map(str, shape))}:{nbytes}:{hex_lanes}"


def encoded_tensor_digest(blob: bytes | bytearray | memoryview) -> str:
    """The digest of a tensor from its WLT1 encoding (a tensor blob), equal to the live tensor's.

    Raises:
        IntegrityError: ``blob`` is not a WLT1 tensor.
    """
    dtype, shape, data = parse_tensor(blob)
    return tensor_digest(dtype, shape, data.nbytes, digest_bytes(data))
