"""Tensor hashes: a tensor's hash is the SHA-256 of its WLT1 bytes, the name of the blob it would be;
its fast digest (:mod:`weightslab.history.fasthash`) is what per-event fingerprints use.

The fast digest is computed where the tensor lives: a CPU tensor's memory is read
in place by numpy; a tensor on an accelerator is reduced there with torch's
integer ops (the same wrapping sums, so the same digest), and only two 64-bit
lanes come back to the host.

One flat namespace of tensors covers everything a checkpoint restores and a
fingerprint proves (see :mod:`weightslab.experiment.capture`); the state hash of
their hashes is defined with the manifest format (:mod:`weightslab.history.manifest`),
so a checkpoint's manifest proves the state hash recorded with its event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from weightslab.history import fasthash
from weightslab.history.hashing import balanced_map, sha256_many
from weightslab.history.tensorcodec import flat_bytes, header_prefix

__all__ = ["fast_digest", "fast_digests", "tensor_hash", "tensor_hashes", "to_tensor"]

#: Rows of BLOCK words reduced at once on a device (bounds the temporary to 64 MiB).
_DEVICE_ROWS = 8192
_device_weights: dict[torch.device, tuple[torch.Tensor, ...]] = {}


def to_tensor(value: Any) -> torch.Tensor:
    """A numpy array or tensor as a CPU tensor (numpy bool/int/float dtypes)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    arr = np.asarray(value)
    if not (arr.flags.c_contiguous and arr.flags.writeable):  # torch refuses to alias read-only memory
        arr = arr.copy()
    return torch.from_numpy(arr)  # keeps 0-d arrays 0-d


def _tensor_parts(t: torch.Tensor) -> tuple[bytes | memoryview, ...]:
    """The WLT1 encoding of ``t`` as (header, values) views, without building the bytes."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    header = header_prefix(str(t.dtype).removeprefix("torch."), list(t.shape))
    return (header, flat_bytes(t)) if t.numel() else (header,)


def tensor_hash(t: torch.Tensor) -> str:
    """SHA-256 of the tensor's WLT1 encoding (the name of the blob it would be stored as)."""
    return sha256_many([_tensor_parts(t)])[0]


def tensor_hashes(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """:func:`tensor_hash` of each tensor, hashed on a few threads when there is much to hash."""
    names = list(tensors)
    return dict(zip(names, sha256_many([_tensor_parts(tensors[n]) for n in names])))


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def fast_digest(t: torch.Tensor, view: memoryview | None = None) -> str:
    """The fast digest of ``t`` (dtype, shape and values), computed on ``t``'s own device (``view``: the bytes
    of a CPU tensor's values, already at hand, e.g. from its blob encoding)."""
    if not t.is_contiguous():
        t = t.contiguous()
    nbytes = t.nbytes
    if t.is_cpu:
        lanes = fasthash.lanes(view if view is not None else flat_bytes(t.detach())) if nbytes else (0, 0)
    else:
        lanes = _device_lanes(t.detach())
    return fasthash.tensor_digest(_dtype_name(t.dtype), t.shape, nbytes, fasthash.digest_of_lanes(*lanes))


def fast_digests(tensors: Mapping[str, torch.Tensor], views: Mapping[str, memoryview] | None = None) -> dict[str, str]:
    """:func:`fast_digest` of each tensor: small CPU tensors in one vectorised pass, larger ones on a few
    threads when there is much to hash. ``views``: the value bytes of some CPU tensors, already at hand."""
    views = views or {}
    small = [n for n, t in tensors.items() if t.is_cpu and 0 < t.nbytes <= fasthash.SMALL]
    out = dict(zip(small, _small_digests([tensors[n] for n in small], [views.get(n) for n in small])))
    large = [n for n in tensors if n not in out]
    sizes = [tensors[n].nbytes for n in large]
    out.update(zip(large, balanced_map(lambda n: fast_digest(tensors[n], views.get(n)), large, sizes)))
    return {n: out[n] for n in tensors}


def _small_digests(tensors: list[torch.Tensor], views: list[memoryview | None]) -> list[str]:
    """:func:`fast_digest` of small, non-empty CPU tensors (:func:`fasthash.lanes_of_small`)."""
    datas = [v if v is not None else flat_bytes(t.detach() if t.is_contiguous() else t.detach().contiguous())
             for t, v in zip(tensors, views)]
    lanes = fasthash.lanes_of_small(datas)
    return [fasthash.tensor_digest(_dtype_name(t.dtype), t.shape, t.nbytes, fasthash.digest_of_lanes(*pair))
            for t, pair in zip(tensors, lanes)]


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype) or _DTYPE_NAMES.setdefault(dtype, str(dtype).removeprefix("torch."))


def _device_lanes(t: torch.Tensor) -> tuple[int, int]:
    """:func:`weightslab.history.fasthash.lanes` with torch ops on ``t``'s device (wrapping int64 sums)."""
    raw = t.reshape(-1).view(torch.uint8)
    if raw.numel() == 0:
        return 0, 0
    size = 8 * fasthash.BLOCK
    pad = -raw.numel() % size
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    words = raw.view(torch.int64).view(-1, fasthash.BLOCK)
    blocks = words.shape[0]
    w1, w2, p1, p2 = _weights(t.device, blocks)
    lane1 = torch.zeros((), dtype=torch.int64, device=t.device)
    lane2 = torch.zeros((), dtype=torch.int64, device=t.device)
    for start in range(0, blocks, _DEVICE_ROWS):
        end = min(start + _DEVICE_ROWS, blocks)
        chunk = words[start:end]
        lane1 += ((chunk * w1).sum(dim=1) * p1[start:end]).sum()
        lane2 += ((chunk * w2).sum(dim=1) * p2[start:end]).sum()
    both = torch.stack([lane1, lane2]).cpu().tolist()  # the only transfer: 16 bytes
    return both[0] & fasthash.MASK, both[1] & fasthash.MASK


def _weights(device: torch.device, blocks: int) -> tuple[torch.Tensor, ...]:
    """The position weights and (at least) ``blocks`` block weights of both lanes, kept on ``device``."""
    have = _device_weights.get(device)
    if have is None or have[2].numel() < blocks:
        grown = max(blocks, 2 * have[2].numel() if have is not None else 1024)
        have = tuple(torch.from_numpy(w.copy()).to(device)
                     for w in (fasthash.W1, fasthash.W2, *fasthash.block_weights(grown)))
        _device_weights[device] = have
    return have
