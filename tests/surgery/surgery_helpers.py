"""Helpers of the surgery tests: fingerprints, training steps, optimizer factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weightslab.surgery import NetworkWithOps

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=1e-3),
    "amsgrad": lambda params: torch.optim.Adam(params, lr=1e-2, amsgrad=True),
}


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Also right for the tutorial model's log-probabilities: log_softmax is idempotent.
    return F.cross_entropy(model(x), y)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss_of(model, x, y).backward()
    optimizer.step()


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


def fingerprint(model: NetworkWithOps, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Everything a refused operation must leave alone: tensors, flags, identities, optimizer state."""
    params = list(model.parameters())
    return {
        "state": _clone(model.state_dict()),
        "param_ids": [id(p) for p in params],
        "requires_grad": [p.requires_grad for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "widths": [layer.neuron_count for layer in model.layers],
        "incoming": [layer.incoming_count for layer in model.layers],
        "optimizer": None if optimizer is None else _clone(optimizer.state_dict()),
        "optimizer_groups": None
        if optimizer is None
        else [[id(p) for p in g["params"]] for g in optimizer.param_groups],
        "age": model.age,
        "mode": model.tracking_mode,
    }


def assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), f"{path} changed"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path} keys changed"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path} length changed"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
