"""Whole attention heads of the converted window attention modules (Swin, Swin v2, MaxViT).

A head h of such a module is: rows h·d … h·d+d-1 of each of the 3 blocks (queries, keys, values)
of its ``qkv`` / ``to_qkv`` projection, the matching d columns of ``proj`` / ``merge`` (they read
the values), column h of its relative position bias table (Swin, MaxViT), or row h of Swin v2's
``cpb_mlp.2`` (one bias per head) and entry h of its ``logit_scale``, and one unit of its head
count (``num_heads`` / ``n_heads``, read from those tensors' shapes, so a checkpoint restores it).

While traced, the module calls :func:`trace_heads` instead of its attention product: the
projections run as ops layers (so the stream's keys are followed), the output projection's
columns get the values' keys, the per-head tensors become followers keyed by one key per head,
and the heads are recorded (``Graph.heads``). Planning then removes or adds heads whole
(:func:`close_heads`, :func:`add_heads`); a part of a head (a query or value dimension) is
refused, naming ``num_heads`` and ``head_dim``: the heads must keep equal widths, and a query
dimension goes with its key dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from weightslab.errors import SurgeryError
from weightslab.surgery.graph import Graph, HeadSet
from weightslab.surgery.relayout import KeyEdit, Slot
from weightslab.surgery.trace_followers import record_follower

if TYPE_CHECKING:
    from weightslab.surgery.trace import Tracer

__all__ = ["add_heads", "close_heads", "head_set_of", "trace_heads"]

#: The fill of a new head's entry in a per-head tensor: torchvision's initial logit scale, else 0.
LOGIT_SCALE_FILL = math.log(10.0)


def trace_heads(
    tracer: Tracer,
    module: nn.Module,
    x: torch.Tensor,
    qkv: Any,
    proj: Any,
    per_head: tuple[str, int],
    bias: tuple[nn.Module, torch.Tensor, Any] | None = None,
) -> torch.Tensor:
    """The traced call of a window attention ``module`` on ``x`` (see the module docstring).

    ``per_head``: the attribute of the module's tensor with one entry per head and its dim (the
    head count is read from it: a planned trace gives it its planned shape); ``bias``: Swin v2's
    (bias MLP, its input, its last layer).
    """
    name = tracer.module_names.get(module, "?")
    tracer.not_generic("window attention (its heads are edited whole)")
    tensor_name = f"{name}.{per_head[0]}" if name else per_head[0]
    heads = int(tracer.by_name.get(tensor_name, getattr(module, per_head[0])).shape[per_head[1]])
    qkv_out = qkv(x)
    keys = np.asarray(tracer.graph.out_keys[tracer.names[qkv]], dtype=np.int64)
    if len(keys) % (3 * heads):
        raise RuntimeError(f"{tracer.names[qkv]} has {len(keys)} rows: not 3 blocks of {heads} heads of equal width")
    by_block = keys.reshape(3, heads, -1)
    tracer.suppress += 1  # the keys' own ops are not the model's
    try:
        values = torch.as_tensor(by_block[2].reshape(-1))
        z = torch.zeros((*qkv_out.shape[:-1], len(values)), dtype=qkv_out.dtype, device=qkv_out.device)
        tracer.tag(z, values.expand(z.shape), None)
    finally:
        tracer.suppress -= 1
    out = proj(z)
    bias_name, bias_keys = "", np.zeros(0, dtype=np.int64)
    if bias is not None:
        mlp, mlp_input, last = bias
        mlp(mlp_input)
        bias_name = tracer.names[last]
        bias_keys = tracer.graph.out_keys[bias_name]
        if len(bias_keys) != heads:
            raise RuntimeError(f"{bias_name} has {len(bias_keys)} outputs for {heads} heads")
    head = HeadSet(tracer.names[qkv], by_block.transpose(1, 0, 2).reshape(heads, -1).copy(), bias_name,
                   bias_keys, ((tensor_name, per_head[1]),))
    tracer.graph.heads[name] = head
    fill = LOGIT_SCALE_FILL if per_head[0] == "logit_scale" else 0.0
    record_follower(tracer, tensor_name, per_head[1], head.representatives(), fill)
    return out


def _describe(module: str, head: HeadSet) -> str:
    return f"the attention heads in {module} (num_heads={head.heads}, head_dim={head.head_dim} of that module)"


def _rows(head: HeadSet) -> str:
    d, inner = head.head_dim, head.heads * head.head_dim
    return ", ".join(f"{b * inner}-{b * inner + d - 1}" for b in range(3))


def close_heads(graph: Graph, removed: set[int], refusal: str) -> set[int]:
    """``removed`` (classes) with every head it removes whole (or through its bias row) removed with all its parts.

    Raises:
        SurgeryError: a part of a head would go (its width would differ from the others'), or every head.
    """
    if not graph.heads:
        return removed
    removed = set(removed)
    for module, head in graph.heads.items():
        wanted = np.fromiter(removed, dtype=np.int64, count=len(removed))
        blocks = graph.classes_of(head.blocks)
        gone = np.isin(blocks, wanted)
        if len(head.bias_keys):
            bias = graph.classes_of(head.bias_keys)
            by_bias = np.isin(bias, wanted)
            gone[by_bias] = True  # pruning a head's bias row prunes the head
        whole = gone.all(1)
        partial = np.flatnonzero(gone.any(1) & ~whole)
        if len(partial):
            raise SurgeryError(
                f"{refusal}: these are queries, keys or values of head {int(partial[0])} of {_describe(module, head)}; "
                f"heads keep equal widths and a query dimension goes with its key dimension, so prune whole heads: "
                f"head h is rows h·{head.head_dim} to h·{head.head_dim}+{head.head_dim - 1} of each of the 3 blocks of "
                f"{head.heads * head.head_dim} rows of {head.qkv} (head 0: rows {_rows(head)})"
                + (f", or row h of {head.bias}" if head.bias else "") + "."
            )
        if whole.all():
            raise SurgeryError(f"{refusal}: it would remove every head of {_describe(module, head)}; keep at least one.")
        if whole.any():
            removed |= set(blocks[whole].ravel().tolist())
            if len(head.bias_keys):
                removed |= set(graph.classes_of(head.bias_keys)[whole].tolist())
    return removed


def head_set_of(graph: Graph, name: str) -> tuple[str, HeadSet] | None:
    """The window attention module (and its heads) whose ``qkv`` or bias layer is ``name``, if any."""
    for module, head in graph.heads.items():
        if name in (head.qkv, head.bias):
            return module, head
    return None


def add_heads(graph: Graph, module: str, head: HeadSet, name: str, count: int, label: Callable[[str], str]) -> KeyEdit:
    """New whole heads: ``count`` rows of the ``qkv`` layer (a multiple of 3 · head_dim), or of the bias layer.

    New query, key and value rows go at the end of their blocks, the output projection's new
    columns (zero: the output is unchanged) after the values', the per-head tensors gain an entry.

    Raises:
        SurgeryError: ``count`` is not a whole number of heads.
    """
    per = 3 * head.head_dim if name == head.qkv else 1
    if count % per:
        raise SurgeryError(
            f"cannot add {count} neurons to {label(name)}: they are the queries, keys and values of "
            f"{_describe(module, head)}; heads keep equal widths, so add whole heads of {per} rows: add a multiple "
            f"of {per} (e.g. neuron_count={per}), or neuron_count=1 per head to {head.bias or 'its bias layer'}."
        )
    new_heads = count // per
    d = head.head_dim
    sections = [list(s) for s in graph.out_keys[head.qkv].reshape(3, -1)]
    anchors = [int(graph.classes_of(np.asarray([s[-1]]))[0]) for s in sections]
    next_key = graph.key_count
    slots: list[Slot] = []
    added: list[list[int]] = [[], [], []]
    bias_added: list[int] = []
    for _ in range(new_heads):
        for block in range(3):
            for _ in range(d):
                slots.append(Slot(anchors[block], {head.qkv: next_key}))
                added[block].append(next_key)
                next_key += 1
        if head.bias:
            bias_anchor = int(graph.classes_of(graph.out_keys[head.bias][-1:])[0])
            slots.append(Slot(bias_anchor, {head.bias: next_key}))
            bias_added.append(next_key)
            next_key += 1
    planned = {head.qkv: np.asarray([k for block in range(3) for k in sections[block] + added[block]], dtype=np.int64)}
    if head.bias:
        planned[head.bias] = np.concatenate([graph.out_keys[head.bias], np.asarray(bias_added, dtype=np.int64)])
    fresh = np.asarray(bias_added if head.bias else added[0][::d], dtype=np.int64)
    followers = {tensor: np.concatenate([graph.followers[tensor].keys, fresh]) for tensor, _ in head.followers
                 if tensor in graph.followers}
    return KeyEdit(slots=tuple(slots), planned=planned, followers=followers)
