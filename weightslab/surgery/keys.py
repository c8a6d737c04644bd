"""Key tensors: the int64 tensors the tracer keeps next to activations (pure functions).

A key tensor has its activation's shape and holds, at every element, the key of
the producer channel the element comes from (``-1``: not from an ops layer). Most
are *broadcast*: a convolution's keys vary along the channel dimension only, so
they are kept as an expanded view (stride 0 along batch and space), and the
functions here work on the *compact* form (those dimensions cut to size 1), which
makes a trace cost the number of channels, not the number of activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "EXTERNAL",
    "broadcast_dims",
    "compact",
    "compact_many",
    "index_touches",
    "key_dims",
    "normalize_dim",
    "pad_keys",
    "recompact",
]

EXTERNAL = -1


def compact(keys: torch.Tensor) -> torch.Tensor:
    """A view of ``keys`` with every broadcast (stride-0) dimension cut to size 1."""
    if keys.dim() == 0:
        return keys
    index = tuple(slice(0, 1) if (s == 0 and n > 1) else slice(None) for s, n in zip(keys.stride(), keys.shape))
    return keys[index]


def recompact(keys: torch.Tensor) -> torch.Tensor:
    """``keys`` as a broadcast view along every dimension where they do not vary (same values).

    Shape ops on broadcast keys (a reshape, a concatenation) copy them to full size; cut back,
    every later op on them costs their number of channels again, not of activations.
    """
    small = compact(keys)
    if small.dim() == 0 or small.numel() <= 64:
        return keys
    index = []
    constant = False
    for d in range(small.dim()):
        if small.shape[d] > 1 and bool((small == small.narrow(d, 0, 1)).all()):
            index.append(slice(0, 1))
            constant = True
        else:
            index.append(slice(None))
    if not constant:
        return keys if small is keys else small.expand(keys.shape)
    return small[tuple(index)].expand(keys.shape)


def broadcast_dims(keys: torch.Tensor) -> set[int]:
    """The dimensions along which ``keys`` is only broadcast (stride 0, size > 1)."""
    return {d for d, (s, n) in enumerate(zip(keys.stride(), keys.shape)) if s == 0 and n > 1}


def compact_many(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Same-shaped ``tensors`` cut to size 1 along the dimensions where all are broadcast."""
    if not tensors or tensors[0].dim() == 0:
        return list(tensors)
    common = set.intersection(*(broadcast_dims(t) for t in tensors))
    if not common:
        return list(tensors)
    index = tuple(slice(0, 1) if d in common else slice(None) for d in range(tensors[0].dim()))
    return [t[index] for t in tensors]


def key_dims(keys: torch.Tensor) -> set[int]:
    """The dimensions along which the keys vary (the channel dimensions of this layout)."""
    small = compact(keys)
    dims = set()
    for d in range(small.dim()):
        if small.shape[d] > 1 and bool((small != small.narrow(d, 0, 1)).any()):
            dims.add(d)
    return dims


def normalize_dim(dim: Any, ndim: int) -> int | None:
    """``dim`` as a non-negative int, or None when it is not an int."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        return None
    return dim % ndim if ndim else 0


def pad_keys(keys: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """The keys of ``F.pad(x, pad)``: a padded position belongs to the channel it pads."""
    out = keys
    for i in range(0, len(pad), 2):
        dim = keys.dim() - 1 - i // 2
        left, right = int(pad[i]), int(pad[i + 1])
        if left == 0 and right == 0:
            continue
        size = out.shape[dim]
        if out.stride(dim) == 0 or size == 1:
            shape = list(out.shape)
            shape[dim] = size + left + right
            out = out.narrow(dim, 0, 1).expand(shape)
            continue
        index = torch.arange(-left, size + right).clamp(0, size - 1)
        out = out.index_select(dim, index)
    return out


def index_touches(index: Any, ndim: int, dims: set[int]) -> bool | None:
    """Whether a ``tensor[index]`` selects (anything but all) along one of ``dims``.

    Returns None when the index cannot be read (then assume it does).
    """
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = []
    for item in items:
        if item is None:
            consumed.append(0)
        elif item is Ellipsis:
            consumed.append(-1)
        elif isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            consumed.append(max(item.dim(), 1))
        else:
            consumed.append(1)
    if consumed.count(-1) > 1:
        return None
    fixed = sum(c for c in consumed if c > 0)
    dim = 0
    for item, width in zip(items, consumed):
        if width == -1:
            dim += ndim - fixed
            continue
        span = set(range(dim, dim + width))
        dim += width
        if not span & dims:
            continue
        if not (isinstance(item, slice) and item == slice(None)):
            return True
    return False
