"""The experiment's full state as named tensors, and its fingerprint.

One flat namespace of tensors covers everything a checkpoint restores and a
fingerprint proves: ``model/*`` (parameters and buffers, per-neuron settings
and counters included), ``optim/<param index>/<key>``, ``ledger/<split>/*``,
``sampler/<split>/*`` and ``rng/*``. Non-tensor parts (optimizer
hyper-parameters, architecture) travel as JSON beside it.

A tensor's hash is the SHA-256 of its WLT1 bytes (the blob it would be stored
as); the state hash is the SHA-256 of the canonical JSON of {name: hash}, so a
checkpoint manifest proves the state hash recorded with its event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from weightslab.events.codec import canonical_json
from weightslab.history.hashing import sha256_many
from weightslab.history.tensorcodec import flat_bytes, header_prefix

__all__ = ["GROUPS", "group_hashes", "state_hash", "tensor_hash", "to_tensor"]

GROUPS = ("model", "optim", "ledger", "sampler", "rng")


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


def state_hash(hashes: Mapping[str, str]) -> str:
    """The fingerprint of a whole state, from its per-tensor hashes."""
    return hashlib.sha256(_names_json(hashes).encode()).hexdigest()


def _names_json(hashes: Mapping[str, str]) -> str:
    """``canonical_json(hashes)`` for a flat map of text to text, without the general walk over values.

    Text that the general encoder would refuse (a NUL, which JSON writes as an escape, or a lone
    surrogate, which UTF-8 cannot hold) goes through :func:`canonical_json` itself, so the output,
    or the error, is always the same.
    """
    if all(type(k) is str and type(v) is str for k, v in hashes.items()):
        text = json.dumps(dict(hashes), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if "\\u0000" not in text:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                return text
    return canonical_json(dict(hashes))


def group_hashes(hashes: Mapping[str, str], groups: Iterable[str] = GROUPS) -> dict[str, str]:
    """Fingerprint per group (model, optim, ledger, sampler, rng), to say *what* differs."""
    parts: dict[str, dict[str, str]] = {g: {} for g in groups}
    for k, v in hashes.items():
        part = parts.get(k.partition("/")[0])
        if part is not None:
            part[k] = v
    return {g: state_hash(part) for g, part in parts.items()}
