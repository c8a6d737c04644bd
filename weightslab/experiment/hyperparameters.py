"""Hyper-parameters set between calls: the optimizer's learning rate, weight decay and momentum, the batch size.

:func:`check` validates every value against the optimizer at hand before anything
changes; :func:`apply` sets them and returns how to undo it (an operation whose
event cannot be written is undone). Under a scheduler the learning rate is the
scheduler's base: each group's current rate is rescaled by new / old base, so the
schedule's shape is kept. Momentum is ``momentum`` for SGD-like optimizers and the
first of ``betas`` for Adam-like ones.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from weightslab.errors import ConfigurationError

if TYPE_CHECKING:
    from weightslab.experiment.runtime import Runtime

__all__ = ["NAMES", "apply", "check"]

NAMES = ("learning_rate", "weight_decay", "momentum", "batch_size")


def _number(name: str, value: Any, low: float, *, open_low: bool, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    below = value <= low if open_low else value < low
    if below or (high is not None and value >= high):
        bound = f"> {low}" if open_low else f">= {low}"
        raise ConfigurationError(f"{name} must be {bound}{f' and < {high}' if high is not None else ''}, "
                                 f"got {value!r}")
    return float(value)


def check(rt: Runtime, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values to set, checked against the optimizer (nothing changes).

    Raises:
        ConfigurationError: an unknown name, a value out of range, or a hyper-parameter the optimizer
            does not have (the message says which it has).
    """
    unknown = sorted(set(values) - set(NAMES))
    if unknown:
        raise ConfigurationError(f"unknown hyper-parameter {', '.join(map(repr, unknown))}; set_hyperparameters "
                                 f"knows {', '.join(NAMES)}")
    if not values:
        raise ConfigurationError(f"name at least one hyper-parameter to set ({', '.join(NAMES)})")
    group = rt.optimizer.param_groups[0]
    kind = type(rt.optimizer).__name__
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "batch_size":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ConfigurationError(f"batch_size must be a positive integer, got {value!r}")
            out[name] = int(value)
        elif name == "learning_rate":
            out[name] = _number(name, value, 0.0, open_low=True)
        elif name == "weight_decay":
            if "weight_decay" not in group:
                raise ConfigurationError(f"{kind} has no weight_decay; its hyper-parameters are {sorted(group)}")
            out[name] = _number(name, value, 0.0, open_low=False)
        else:  # momentum
            if "momentum" not in group and "betas" not in group:
                raise ConfigurationError(f"{kind} has no momentum (nor betas); its hyper-parameters are "
                                         f"{sorted(k for k in group if k != 'params')}")
            out[name] = _number(name, value, 0.0, open_low=False, high=1.0)
    return out


def apply(rt: Runtime, values: Mapping[str, Any]) -> Callable[[], None]:
    """Set checked ``values`` (see :func:`check`); returns a function that puts everything back."""
    groups = rt.optimizer.param_groups
    saved = [{k: copy.copy(v) for k, v in g.items() if k != "params"} for g in groups]
    scheduler = rt.scheduler
    saved_bases = list(scheduler.base_lrs) if scheduler is not None else None
    saved_batch = rt.config.batch_size
    if "learning_rate" in values:
        lr = values["learning_rate"]
        for i, g in enumerate(groups):
            if scheduler is not None:
                old = scheduler.base_lrs[i]
                g["lr"] = g["lr"] * lr / old if old else lr
                scheduler.base_lrs[i] = lr
                if "initial_lr" in g:
                    g["initial_lr"] = lr
            else:
                g["lr"] = lr
    if "weight_decay" in values:
        for g in groups:
            g["weight_decay"] = values["weight_decay"]
    if "momentum" in values:
        for g in groups:
            if "momentum" in g:
                g["momentum"] = values["momentum"]
            else:
                g["betas"] = (values["momentum"], *tuple(g["betas"])[1:])
    if "batch_size" in values:
        rt.set_batch_size(values["batch_size"])

    def undo() -> None:
        for g, before in zip(groups, saved):
            g.update(before)
        if scheduler is not None and saved_bases is not None:
            scheduler.base_lrs[:] = saved_bases
        if rt.config.batch_size != saved_batch:
            rt.set_batch_size(saved_batch)

    return undo
