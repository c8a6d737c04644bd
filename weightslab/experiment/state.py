"""Tensor hashes: a tensor's hash is the SHA-256 of its WLT1 bytes, the name of the blob it would be.

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

from weightslab.history.hashing import sha256_many
from weightslab.history.tensorcodec import flat_bytes, header_prefix

__all__ = ["tensor_hash", "tensor_hashes", "to_tensor"]


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
