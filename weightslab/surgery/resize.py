"""Loading a checkpoint whose layer widths differ from the live model's."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from weightslab.errors import ConfigurationError, SurgeryError
from weightslab.surgery.apply import install_data, restorer
from weightslab.surgery.network_state import NetworkState
from weightslab.surgery.transaction import UndoLog

__all__ = ["load_state_resizing"]


def _preview(keys: set[str]) -> str:
    shown = sorted(keys)[:5]
    return ", ".join(shown) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def load_state_resizing(network: nn.Module, state: NetworkState, state_dict: Mapping[str, torch.Tensor]) -> None:
    """See :meth:`NetworkWithOps.load_state_resizing` (``state`` is the network's :class:`NetworkState`)."""
    own = network.state_dict()
    missing, unexpected = set(own) - set(state_dict), set(state_dict) - set(own)
    if missing or unexpected:
        raise ConfigurationError(
            "the state dict does not match the model's structure: "
            + (f"missing {_preview(missing)}; " if missing else "")
            + (f"unexpected {_preview(unexpected)}; " if unexpected else "")
            + "load a checkpoint of this model class."
        )
    names = state.layer_names()
    prefixes = {name + "." if name else "": layer for layer, name in names.items()}
    owned: dict[str, tuple[Any, str]] = {}
    for prefix, layer in prefixes.items():
        module: Any = layer
        for tname in [*module._parameters, *module._buffers]:
            owned[prefix + tname] = (layer, tname)
    followers = []
    for key, value in state_dict.items():
        if key not in owned and tuple(own[key].shape) != tuple(value.shape):
            if own[key].dim() != value.dim() or not own[key].is_floating_point():
                raise ConfigurationError(
                    f"{key} has shape {tuple(value.shape)} in the state dict but {tuple(own[key].shape)} in the "
                    "model, and it is not part of an ops layer or a tensor laid out along channels that could be "
                    "resized."
                )
            followers.append(key)  # e.g. a layer norm's affine entries or a position embedding, after an edit
    resized = followers or any(tuple(own[k].shape) != tuple(v.shape) for k, v in state_dict.items() if k in owned)
    sizes = _size_producers(state) if resized else {}
    optimizer = state.optimizer
    log = UndoLog()
    for layer in prefixes.values():
        layer._flush_triggers()  # sums kept by batched counting count in the old widths
    try:
        for prefix, layer in prefixes.items():
            _resize_layer(layer, prefix, state_dict, optimizer, log)
        for key in followers:
            _resize_follower(network, key, state_dict[key], optimizer, log)
        state.forget_graph()
        network.load_state_dict(state_dict, strict=True)
        by_name = {name: layer for layer, name in names.items()}
        for path, producer in sizes.items():
            owner_name, _, attr = path.rpartition(".")
            log.set_attr(network.get_submodule(owner_name), attr, by_name[producer].neuron_count)
    except Exception as error:
        log.rollback()
        for layer in names:
            layer._refresh_caches()
        raise ConfigurationError(f"loading the state dict failed and was rolled back: {error}") from error
    state.forget_graph()
    state.invalidate_step_targets()


def _size_producers(state: NetworkState) -> dict[str, str]:
    """``module.attribute`` → the producer whose width it is (see ``Graph.sizes``), from the graph at the old widths.

    Empty when the network cannot be traced (it has not seen an input): then no size attribute is known.
    """
    if not state.can_trace():
        return {}
    try:
        graph = state.dependency_graph()
    except SurgeryError:
        return {}
    found = {}
    for path, keys in graph.sizes.items():
        classes = graph.classes_of(keys)
        for producer, out_keys in graph.out_keys.items():
            if len(out_keys) == len(keys) and np.array_equal(graph.classes_of(out_keys), classes):
                found[path] = producer
                break
    return found


def _resize_layer(
    layer: Any,
    prefix: str,
    state_dict: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    log: UndoLog,
) -> None:
    for tname, param in list(layer._parameters.items()):
        if param is None or param.shape == state_dict[prefix + tname].shape:
            continue
        target = state_dict[prefix + tname]
        log.push(restorer(param, param.data, param.grad))
        install_data(param, torch.zeros(target.shape, dtype=param.dtype, device=param.device))
        param.grad = None
        if optimizer is not None and param in optimizer.state:
            log.push(partial(optimizer.state.__setitem__, param, optimizer.state.pop(param)))
    for tname, buffer in list(layer._buffers.items()):
        if buffer is None or buffer.shape == state_dict[prefix + tname].shape:
            continue
        target = state_dict[prefix + tname]
        log.set_item(layer._buffers, tname, torch.zeros(target.shape, dtype=buffer.dtype, device=buffer.device))
    old_out, old_in, old_groups = layer.neuron_count, layer.incoming_count, getattr(layer, "groups", None)
    out_width = int(state_dict[prefix + "lr_row_multiplier"].shape[0])
    in_width = int(state_dict[prefix + "lr_col_multiplier"].shape[0])
    groups = old_groups
    if old_groups is not None and old_groups != 1:
        per_group = int(state_dict[prefix + "weight"].shape[1])  # a grouped weight's columns are per group
        groups = in_width // per_group if per_group else old_groups
    if (out_width, in_width, groups) != (old_out, old_in, old_groups):
        log.push(partial(layer._set_widths, old_out, old_in if layer.in_attr else None, old_groups))
        layer._set_widths(out_width, in_width if layer.in_attr else None, groups)


# The width attributes of torch's normalisation modules, read back from their tensors.
_WIDTHS = {nn.LayerNorm: ("normalized_shape", "weight"), nn.GroupNorm: ("num_channels", "weight"),
           nn.modules.batchnorm._NormBase: ("num_features", "running_mean")}


def _resize_follower(
    network: nn.Module, key: str, target: torch.Tensor, optimizer: torch.optim.Optimizer | None, log: UndoLog
) -> None:
    owner_name, _, attr = key.rpartition(".")
    owner: Any = network.get_submodule(owner_name)
    if attr in owner._parameters:
        param = owner._parameters[attr]
        log.push(restorer(param, param.data, param.grad))
        install_data(param, torch.zeros(target.shape, dtype=param.dtype, device=param.device))
        param.grad = None
        if optimizer is not None and param in optimizer.state:
            log.push(partial(optimizer.state.__setitem__, param, optimizer.state.pop(param)))
    else:
        buffer = owner._buffers[attr]
        log.set_item(owner._buffers, attr, torch.zeros(target.shape, dtype=buffer.dtype, device=buffer.device))
    for kind, (width_attr, tensor_attr) in _WIDTHS.items():
        if isinstance(owner, kind) and attr == tensor_attr:
            width = int(target.shape[0])
            value: Any = (width,) if kind is nn.LayerNorm else width
            if kind is not nn.LayerNorm or len(getattr(owner, "normalized_shape", ())) == 1:
                log.set_attr(owner, width_attr, value)
