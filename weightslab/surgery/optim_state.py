"""Optimizer state surgery and the step hooks behind per-neuron learning rates.

Surgery keeps the optimizer object and the ``nn.Parameter`` objects; only the
tensors change. Per-element state (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ...) is remapped like the parameter
(surviving slices bit-exact, new slices zero); scalar state (``step``) is kept.

Per-neuron learning rates are exact for any optimizer: a step pre-hook
snapshots the few parameters with non-unit multipliers, a post-hook sets
``p = old + m·(new − old)`` (``torch.lerp``, exact for m = 0 and m = 1), so the
realised update is m times the optimizer's own update, whatever its rule.

The same mechanism fixes Adam's bias correction for fresh moments: Adam keeps one
``step`` per tensor, so new rows (moments zero) of a tensor stepped t times would
be corrected with ``1-β^t`` instead of ``1-β^age`` and take ~3x too large steps.
Each row/column remembers its birth step (a buffer of its layer); while some
element is young, its update is scaled by the ratio of the two corrections.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Protocol

import torch

from weightslab.errors import SurgeryError
from weightslab.surgery.modules import NeuronLayer

__all__ = ["OptimizerBinding", "StepTarget", "StepTargets", "check_state_layout", "param_step"]

#: A parameter whose update the step hooks may adjust, its layer, and its role ("weight" or "bias").
StepTarget = tuple[torch.Tensor, NeuronLayer, str]


class StepTargets(Protocol):
    """Where the step hooks find the parameters to adjust (the network's state)."""

    def step_targets(self) -> list[StepTarget]:
        """The parameters of layers with non-unit multipliers or young rows."""

# Past this age the bias-correction ratio is 1 within float32 precision (β2 = 0.999).
YOUNG_STEPS = 20_000


def param_step(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> int:
    """The optimizer's step count of ``param`` (0 when it has none yet)."""
    if optimizer is None or param not in optimizer.state:
        return 0
    step = optimizer.state[param].get("step")
    return int(step) if step is not None else 0


def check_state_layout(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> None:
    """Refuse (before any mutation) optimizer state that surgery cannot remap.

    Raises:
        SurgeryError: a state tensor that is neither per element nor scalar.
    """
    if optimizer is None or param not in optimizer.state:
        return
    for key, value in optimizer.state[param].items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
            raise SurgeryError(
                f"the optimizer state entry {key!r} has shape {tuple(value.shape)} for a parameter of shape "
                f"{tuple(param.shape)}; surgery only knows per-element and scalar state. Use an optimizer "
                "such as SGD, Adam or AdamW."
            )


def _adam_ratio(t: int, births: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    # Elements born at step b (b > 0) have moments of age t - b; original ones (b = 0) are t old.
    t_ = torch.full_like(births, t, dtype=torch.float64)
    age = torch.where((births > 0) & (births < t), t_ - births.double(), t_)
    correction_t = (1 - beta1**t) / math.sqrt(1 - beta2**t)
    ratio = correction_t * torch.sqrt(1 - beta2**age) / (1 - beta1**age)
    # Exactly 1 for elements as old as the tensor, so their updates stay bit-identical.
    return torch.where(age == t_, torch.ones_like(ratio), ratio)


class OptimizerBinding:
    """The step hooks that one network installs on one optimizer.

    Args:
        targets: the network's state (held weakly: the optimizer does not keep the network alive).
        optimizer: the optimizer to hook.
    """

    def __init__(self, targets: StepTargets, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._targets = weakref.ref(targets)
        self._adam = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
        self._snapshots: list[tuple[torch.Tensor, NeuronLayer, str, torch.Tensor]] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _group_of(self, param: torch.Tensor) -> dict[str, Any]:
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        return {}

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._snapshots = []
        targets = self._targets()
        if targets is None:
            return
        for param, layer, role in targets.step_targets():
            if param.grad is None:
                continue
            state = layer._layer_state
            young = self._adam and state.max_birth > 0 and (
                param_step(optimizer, param) + 1 - state.max_birth < YOUNG_STEPS
            )
            if state.lr_active or young:
                self._snapshots.append((param, layer, role, param.detach().clone()))

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        snapshots, self._snapshots = self._snapshots, []
        for param, layer, role, old in snapshots:
            multiplier = layer.step_multiplier(role, param)
            if self._adam:
                ratio = self._young_ratio(param, layer, role)
                if ratio is not None:
                    multiplier = ratio if multiplier is None else multiplier * ratio
            if multiplier is not None:
                param.copy_(torch.lerp(old, param, multiplier))

    def _young_ratio(self, param: torch.Tensor, layer: NeuronLayer, role: str) -> torch.Tensor | None:
        t = param_step(self.optimizer, param)
        if t == 0 or t - layer._layer_state.max_birth >= YOUNG_STEPS:
            return None
        group = self._group_of(param)
        beta1, beta2 = (float(b) for b in group.get("betas", (0.9, 0.999)))
        module: Any = layer
        births = layer._row_view(module.row_birth_step, role, param)
        if layer._has_columns(role, param):
            births = torch.maximum(births, layer._column_view(module.col_birth_step, param))
        ratio = _adam_ratio(t, births, beta1, beta2)
        return ratio.expand(param.shape).to(dtype=param.dtype)
