"""Pure tensor functions of surgery: no module, optimizer or network state is touched.

``remap`` is the one primitive behind prune and add: given, for every index of
the new tensor along ``dim``, the old index it comes from (``-1``: a new slice),
it gathers surviving slices bit-exactly and fills new ones.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["draw_uniform", "match_occurrences", "perturb", "remap", "remap_group_columns"]


def remap(tensor: torch.Tensor, dim: int, source: np.ndarray, fill: torch.Tensor | float) -> torch.Tensor:
    """A new tensor whose slice ``i`` along ``dim`` is ``tensor``'s slice ``source[i]``.

    Args:
        tensor: the old tensor (not modified).
        dim: the dimension to remap.
        source: old index per new index; ``-1`` marks a new slice.
        fill: value of the new slices: a number, or a tensor shaped like the new
            slices stacked along ``dim`` (``(source == -1).sum()`` of them).

    Returns:
        A new contiguous tensor on ``tensor``'s device with ``tensor``'s dtype.

    Example:
        >>> remap(torch.tensor([1., 2., 3.]), 0, np.array([0, 2, -1]), 0.0)
        tensor([1., 3., 0.])
    """
    source = np.asarray(source, dtype=np.int64)
    shape = list(tensor.shape)
    shape[dim] = len(source)
    keep = np.flatnonzero(source >= 0)
    fresh = np.flatnonzero(source < 0)
    kept = len(keep)
    if not len(fresh) or (fresh == np.arange(kept, len(source))).all():
        # Survivors first, new slices (if any) last: one gather and one concatenation, a single pass each.
        head = source[:kept]
        if kept == tensor.shape[dim] and (head == np.arange(kept)).all():
            base = tensor
        else:
            base = tensor.index_select(dim, _index(head, tensor.device))
        if not len(fresh):
            return base if base is not tensor else tensor.clone(memory_format=torch.contiguous_format)
        shape[dim] = len(fresh)
        if isinstance(fill, torch.Tensor):
            tail = fill.to(device=tensor.device, dtype=tensor.dtype)
        else:
            tail = torch.full(shape, fill, dtype=tensor.dtype, device=tensor.device)
        return torch.cat([base, tail], dim)
    out = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
    if len(keep):
        index = _index(keep, tensor.device)
        old = _index(source[keep], tensor.device)
        out.index_copy_(dim, index, tensor.index_select(dim, old))
    if len(fresh):
        index = _index(fresh, tensor.device)
        if isinstance(fill, torch.Tensor):
            out.index_copy_(dim, index, fill.to(device=tensor.device, dtype=tensor.dtype))
        else:
            out.index_fill_(dim, index, fill)
    return out


def _index(values: np.ndarray, device: torch.device) -> torch.Tensor:
    index = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    return index if device.type == "cpu" else index.to(device)


def remap_group_columns(tensor: torch.Tensor, group_cols: np.ndarray, fill: float) -> torch.Tensor:
    """A grouped convolution's weight with new columns (dim 1) per group.

    Args:
        tensor: the weight (or a state tensor like it), its rows (dim 0) already in the new
            layout: ``g`` groups of equal size, in order.
        group_cols: ``[g, width]``: for each new group and column, the old column within the
            group (-1: new, filled with ``fill``). A group whose columns are all new is a new
            group (a depthwise filter added with its channel): its rows keep their values.
        fill: the value of new columns in existing groups.

    Example:
        >>> w = torch.arange(4.).view(2, 2, 1, 1)  # 2 groups, one row and two columns each
        >>> remap_group_columns(w, np.array([[1, -1], [0, 1]]), 0.0).flatten().tolist()
        [1.0, 0.0, 2.0, 3.0]
    """
    groups, width = group_cols.shape
    rows = tensor.shape[0]
    per_group = rows // groups
    new_group: np.ndarray = np.asarray((group_cols < 0).all(1))
    index = np.where(group_cols >= 0, group_cols, 0)
    index[new_group] = np.minimum(np.arange(width), tensor.shape[1] - 1)
    trailing = [1] * (tensor.dim() - 2)
    shape = [rows, width, *tensor.shape[2:]]
    gather = torch.as_tensor(np.repeat(index, per_group, axis=0), device=tensor.device)
    out = torch.gather(tensor, 1, gather.view(rows, width, *trailing).expand(shape))
    fresh = (group_cols < 0) & ~new_group[:, None]
    fresh[new_group] = np.arange(width) >= tensor.shape[1]
    if fresh.any():
        mask = torch.as_tensor(np.repeat(fresh, per_group, axis=0), device=tensor.device)
        out = out.masked_fill(mask.view(rows, width, *trailing).expand(shape), fill)
    return out


def draw_uniform(shape: list[int], bound: float, generator: torch.Generator) -> torch.Tensor:
    """``U(-bound, bound)`` samples on the CPU from ``generator`` (float64, cast by the caller)."""
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def perturb(values: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``w + ratio·|w|·u`` with ``u ~ U(-1, 1)``: each value moves by at most ``ratio·|w|``."""
    noise = draw_uniform(list(values.shape), 1.0, generator).to(device=values.device, dtype=values.dtype)
    return values + ratio * values.abs() * noise


def match_occurrences(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """For each position of ``new``, the position of the same occurrence of its key in ``old``.

    The ``j``-th occurrence of key ``k`` in ``new`` maps to the ``j``-th occurrence of ``k``
    in ``old``; positions without a counterpart get ``-1``. This is how the input columns
    of a layer follow an edit of the channels they come from, whatever the layout
    (flatten blocks, concatenation offsets, permutations).

    Example:
        >>> match_occurrences(np.array([5, 5, 7, 8]), np.array([5, 5, 8, 9]))
        array([ 0,  1,  3, -1])
    """
    old = np.asarray(old, dtype=np.int64)
    new = np.asarray(new, dtype=np.int64)
    result = np.full(len(new), -1, dtype=np.int64)
    if len(old) == 0 or len(new) == 0:
        return result
    base = max(len(old), len(new)) + 1
    old_codes = _occurrence_codes(old, base)
    new_codes = _occurrence_codes(new, base)
    order = np.argsort(old_codes, kind="stable")
    sorted_codes = old_codes[order]
    where = np.searchsorted(sorted_codes, new_codes)
    where = np.minimum(where, len(sorted_codes) - 1)
    found = sorted_codes[where] == new_codes
    result[found] = order[where[found]]
    return result


def _occurrence_codes(keys: np.ndarray, base: int) -> np.ndarray:
    # (key, rank of this occurrence among equal keys) packed into one sortable pair of int64 columns.
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - run_start
    shifted = keys + 1  # -1 (external) becomes 0, so codes stay non-negative
    return shifted * base + rank
