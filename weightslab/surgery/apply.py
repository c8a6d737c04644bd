"""Apply an edit: the one place where surgery mutates layers and optimizer state.

Staging is pure (every new tensor is built first, random draws from the
operation's own generator); committing only swaps references (``param.data``,
buffers, optimizer state entries, width attributes) and logs in the operation's
:class:`~weightslab.surgery.transaction.UndoLog` how to swap them back, so a
failure mid-way, or an observer that refuses to record the edit, rolls back to
the exact previous objects. The small edits (learning-rate multipliers, frozen
flags, the layers' buffer summaries) are applied here too, logged alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from weightslab.errors import SurgeryError
from weightslab.surgery.modules import NeuronLayer, Slot
from weightslab.surgery.optim_state import check_state_layout, param_step
from weightslab.surgery.plan import AttributeEdit, ModuleEdit, TensorEdit
from weightslab.surgery.tensor_ops import draw_uniform, perturb, remap, remap_group_columns
from weightslab.surgery.transaction import UndoLog

__all__ = [
    "Staged",
    "commit",
    "install_data",
    "refresh_caches",
    "restorer",
    "run_transaction",
    "set_attributes",
    "set_frozen",
    "set_multiplier",
    "stage_edit",
    "stage_reinit",
    "stage_tensor",
]


@dataclass
class Staged:
    """New tensors for one layer (or the module owning a follower), not yet installed."""

    layer: Any
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    out_width: int | None = None
    in_width: int | None = None
    groups: int | None = None


def install_data(param: torch.Tensor, new: torch.Tensor) -> None:
    """Give ``param`` new data (any shape), keeping the Parameter object.

    A plain ``param.data = new`` keeps autograd's gradient accumulator of ``param``, which
    remembers the old shape: if any old graph is still alive (a kept ``loss``, an output),
    the next backward fails. Autograd drops the accumulator when the dtype changes, so
    the data goes through an empty tensor of another dtype first.
    """
    other = torch.float64 if new.dtype != torch.float64 else torch.float32
    param.data = torch.empty(0, dtype=other, device=new.device)
    param.data = new


def restorer(param: torch.Tensor, data: torch.Tensor, grad: torch.Tensor | None) -> Callable[[], None]:
    """A step that gives ``param`` back its ``data`` and ``grad`` (for an :class:`UndoLog`)."""

    def restore() -> None:
        install_data(param, data)
        param.grad = grad

    return restore


def _step_of(layer: NeuronLayer, optimizer: torch.optim.Optimizer | None) -> int:
    weight = getattr(layer, layer.step_roles()[0], None)
    return param_step(optimizer, weight) if isinstance(weight, torch.Tensor) else 0


def _fill(
    spec: float | str,
    tensor: torch.Tensor,
    dim: int,
    count: int,
    layer: NeuronLayer,
    generator: torch.Generator,
    step: int,
) -> torch.Tensor | float:
    if spec == "init":
        shape = list(tensor.shape)
        shape[dim] = count
        return draw_uniform(shape, layer.init_bound(), generator)
    if spec == "step":
        return float(step)
    return float(spec)


def _is_param(layer: NeuronLayer, name: str) -> bool:
    module: Any = layer
    return name in module._parameters


def _stage_state(
    staged: Staged,
    optimizer: torch.optim.Optimizer | None,
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]],
) -> None:
    if optimizer is None:
        return
    for name, transform in transforms.items():
        param = getattr(staged.layer, name)
        check_state_layout(optimizer, param)
        if param not in optimizer.state:
            continue
        entries = {}
        for key, value in optimizer.state[param].items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                entries[key] = transform(value)
        staged.state[name] = entries


def stage_edit(
    layer: NeuronLayer, edit: ModuleEdit, optimizer: torch.optim.Optimizer | None, generator: torch.Generator
) -> Staged:
    """New tensors (and optimizer state) of ``layer`` after a prune/add ``edit``."""
    staged = Staged(layer)
    step = _step_of(layer, optimizer)
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    grouped = getattr(layer, "groups", 1) != 1
    for slot in layer.slots():
        tensor = getattr(layer, slot.name)
        if tensor is None:
            continue
        new = tensor.detach()
        rows = _blocked(edit.row_source, layer.neuron_count, slot.blocks) if slot.row_dim is not None else None
        cols = (edit.row_source if slot.own_cols else edit.col_source) if slot.col_dim is not None else None
        group_cols = None
        if grouped and slot.name == "weight":  # columns per group, not per input channel
            cols, group_cols = None, edit.group_cols
        if rows is not None and slot.row_dim is not None:
            count = int((rows < 0).sum())
            new = remap(new, slot.row_dim, rows, _fill(slot.row_fill, new, slot.row_dim, count, layer, generator, step))
        if cols is not None and slot.col_dim is not None:
            count = int((cols < 0).sum())
            new = remap(new, slot.col_dim, cols, _fill(slot.col_fill, new, slot.col_dim, count, layer, generator, step))
        if group_cols is not None:
            new = remap_group_columns(new, group_cols, float(slot.col_fill))
        if rows is not None or cols is not None or group_cols is not None:
            staged.tensors[slot.name] = new
            if _is_param(layer, slot.name):
                transforms[slot.name] = _zero_fill_transform(slot, rows, cols, group_cols)
    _stage_state(staged, optimizer, transforms)
    if edit.row_source is not None:
        staged.out_width = len(edit.row_source)
    if edit.col_source is not None:
        staged.in_width = len(edit.col_source)
    staged.groups = edit.groups
    return staged


def _blocked(source: np.ndarray | None, width: int, blocks: int) -> np.ndarray | None:
    """A neuron source repeated for each of ``blocks`` stacked blocks of ``width`` rows (a recurrent layer's gates)."""
    if source is None or blocks == 1:
        return source
    return np.concatenate([np.where(source >= 0, source + b * width, -1) for b in range(blocks)])


def _zero_fill_transform(
    slot: Slot, rows: np.ndarray | None, cols: np.ndarray | None, group_cols: np.ndarray | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    def transform(value: torch.Tensor) -> torch.Tensor:
        if rows is not None and slot.row_dim is not None:
            value = remap(value, slot.row_dim, rows, 0.0)
        if cols is not None and slot.col_dim is not None:
            value = remap(value, slot.col_dim, cols, 0.0)
        if group_cols is not None:
            value = remap_group_columns(value, group_cols, 0.0)
        return value

    return transform


def stage_tensor(owner: nn.Module, attr: str, edit: TensorEdit, optimizer: torch.optim.Optimizer | None) -> Staged:
    """The new value (and optimizer state) of a follower tensor ``owner.<attr>`` after an edit."""
    staged = Staged(owner)
    tensor = getattr(owner, attr)
    staged.tensors[attr] = remap(tensor.detach(), edit.dim, edit.source, edit.fill)
    if attr in owner._parameters:
        _stage_state(staged, optimizer, {attr: lambda value: remap(value, edit.dim, edit.source, 0.0)})
    return staged


def set_attributes(owner: nn.Module, edit: AttributeEdit, log: UndoLog) -> None:
    """Give a torch normalisation module (or a size attribute) the width of its channels after an edit, logged."""
    if edit.kind == "size":
        log.set_attr(owner, edit.attr, edit.width)
    elif edit.kind == "layer_norm":
        log.set_attr(owner, "normalized_shape", (edit.width,))
    elif edit.kind == "group_norm":
        log.set_attr(owner, "num_channels", edit.width)
    else:
        log.set_attr(owner, "num_features", edit.width)


_REINIT_SKIP = {"lr_row_multiplier"}


def stage_reinit(
    layer: NeuronLayer,
    indices: list[int],
    ratio: float | None,
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator,
) -> Staged:
    """New tensors of ``layer`` with rows ``indices`` re-drawn (or perturbed by ``ratio``).

    Counters of those neurons restart at 0, their optimizer state at zero with a
    fresh birth step; learning-rate multipliers are kept.
    """
    staged = Staged(layer)
    step = _step_of(layer, optimizer)
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for slot in layer.slots():
        tensor = getattr(layer, slot.name)
        if tensor is None or slot.row_dim is None or slot.name in _REINIT_SKIP:
            continue
        width = layer.neuron_count
        rows = np.arange(width * slot.blocks, dtype=np.int64)
        chosen = [i + b * width for b in range(slot.blocks) for i in indices]  # the neurons' rows in every block
        rows[chosen] = -1
        picked = torch.as_tensor(sorted(chosen), dtype=torch.long)
        old_rows = tensor.detach().index_select(slot.row_dim, picked.to(tensor.device))
        is_param = _is_param(layer, slot.name)
        fill: torch.Tensor | float
        if is_param and ratio is not None:
            fill = perturb(old_rows, ratio, generator)
        elif slot.name.startswith("running_") and ratio is not None:
            fill = old_rows
        else:
            fill = _fill(slot.row_fill, tensor, slot.row_dim, len(chosen), layer, generator, step)
        staged.tensors[slot.name] = remap(tensor.detach(), slot.row_dim, rows, fill)
        if is_param:
            transforms[slot.name] = _zero_fill_transform(slot, rows, None)
    _stage_state(staged, optimizer, transforms)
    return staged


def commit(staged: Staged, optimizer: torch.optim.Optimizer | None, log: UndoLog) -> None:
    """Install staged tensors (same Parameter objects, new ``.data``), logging the reverse swaps."""
    module: Any = staged.layer
    for name, new in staged.tensors.items():
        if name in module._parameters:
            param = module._parameters[name]
            log.push(restorer(param, param.data, param.grad))
            install_data(param, new)
            param.grad = None
        else:
            log.set_item(module._buffers, name, new)
    if optimizer is not None:
        for name, entries in staged.state.items():
            state = optimizer.state[getattr(module, name)]
            for key, value in entries.items():
                log.set_item(state, key, value)
    if staged.out_width is not None or staged.in_width is not None or staged.groups is not None:
        layer = staged.layer
        log.push(partial(layer._set_widths, layer.neuron_count, layer.incoming_count, getattr(layer, "groups", None)))
        layer._set_widths(
            staged.out_width if staged.out_width is not None else layer.neuron_count,
            staged.in_width if staged.in_width is not None else None,
            staged.groups,
        )


def run_transaction(
    staged: list[Staged], optimizer: torch.optim.Optimizer | None, what: str, log: UndoLog
) -> None:
    """Commit every staged layer into ``log``, or none: on any error, roll ``log`` back and raise.

    Raises:
        SurgeryError: installing failed (the cause is chained); everything in ``log`` was undone.
    """
    try:
        for item in staged:
            commit(item, optimizer, log)
    except Exception as error:
        log.rollback()
        raise SurgeryError(f"{what} failed while installing the new tensors and was rolled back: {error}") from error


def refresh_caches(layer: NeuronLayer, log: UndoLog) -> None:
    """Recompute the layer's buffer summaries after an edit, logging the old ones."""
    state = layer._layer_state
    log.push(partial(state.restore_caches, state.caches()))
    layer._refresh_caches()


def set_multiplier(layer: NeuronLayer, buffer_name: str, indices: list[int], lr: float, log: UndoLog) -> None:
    """Set learning-rate multipliers in place (``lr_row_multiplier`` or ``lr_col_multiplier``), logged."""
    buffer: torch.Tensor = getattr(layer, buffer_name)
    log.push(partial(buffer.copy_, buffer.clone()))
    log.push(partial(layer._layer_state.restore_caches, layer._layer_state.caches()))
    layer._set_multiplier(buffer_name, indices, lr)


def set_frozen(layer: NeuronLayer, flag: bool, log: UndoLog) -> None:
    """Freeze or unfreeze one layer (flag, ``requires_grad``, dropped gradients), logged."""
    module: Any = layer
    frozen: torch.Tensor = module.frozen
    params = [(p, p.requires_grad, p.grad) for p in module.parameters(recurse=False)]

    def restore() -> None:
        frozen.copy_(old_flag)
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad

    old_flag = frozen.clone()
    log.push(restore)
    layer._set_frozen(flag)
