"""How one training batch runs: the step function, and the options the built-in step honours.

A *step* gets the model, the batch ``(inputs, labels, ids)``, the optimizer and a
:class:`StepContext`, and returns the per-sample losses and the model's outputs. The
built-in :func:`default_step` is the tutorial's loop body with the recorded options:

- ``amp="bf16" | "fp16"``: forward and loss under ``torch.autocast``; fp16 scales the
  loss with a ``GradScaler`` (its state is part of the checkpoints and fingerprints);
- ``accumulate=k``: the optimizer steps every ``k`` batches on the mean of their losses
  (and at the end of a call, on what it accumulated: no gradient outlives a call);
- ``grad_clip``: the gradients' norm (``1.0`` or ``("norm", 1.0)``) or values
  (``("value", 0.5)``) are clipped before each optimizer step.

A custom step (``Experiment(..., step="package.module:function")``) can do anything and
use the same helpers: ``ctx.autocast()``, ``ctx.backward(loss)``, ``ctx.optimizer_step()``.
It is recorded by name, so replay imports it; one that cannot be imported is refused by
replay with that reason.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from weightslab.errors import ConfigurationError, EventPayloadError, ReplayError
from weightslab.events.codec import normalise

__all__ = [
    "AMP_DTYPES",
    "Step",
    "StepContext",
    "check_compile",
    "check_grad_clip",
    "check_scheduler",
    "default_step",
    "import_step",
    "make_scheduler",
    "step_name",
    "uncompiled",
]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: ``step(model, batch, optimizer, ctx) -> (per-sample losses, outputs)``
Step = Callable[[torch.nn.Module, Batch, torch.optim.Optimizer, "StepContext"], tuple[torch.Tensor, torch.Tensor]]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class StepContext:
    """What a step needs besides the model, the batch and the optimizer (one per training call).

    Attributes:
        criterion: the per-sample loss ``f(output, labels) -> (batch,)``.
        device: where the model trains.
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        scaler: the ``GradScaler`` of fp16 training (``None`` otherwise).
        accumulate: batches per optimizer step.
        index: this batch's position in the call (0, 1, ...); ``last`` whether it is the call's last.
        age: the model age before this batch.
        grad_clip: ``("norm" | "value", limit)`` or ``None``.
    """

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    amp: str | None = None
    scaler: Any = None
    accumulate: int = 1
    index: int = 0
    last: bool = True
    age: int | torch.Tensor = 0
    grad_clip: tuple[str, float] | None = None
    optimizer: torch.optim.Optimizer | None = None
    model: torch.nn.Module | None = None
    #: Under torch.distributed: the loss is the sum of this rank's per-sample losses times this weight
    #: (world size / global batch), so that DDP's average of the ranks' gradients is the global batch's mean
    loss_weight: float | None = None

    @property
    def steps_optimizer(self) -> bool:
        """Whether the optimizer steps after this batch (the end of an accumulation, or of the call)."""
        return self.last or (self.index + 1) % self.accumulate == 0

    @property
    def accumulated(self) -> int:
        """How many batches this batch's optimizer step sums (fewer than ``accumulate`` at a call's end)."""
        return self.index % self.accumulate + 1

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for the recorded ``amp`` (a no-op without it)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.amp])

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled by the grad scaler under fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        """Clip (after unscaling), step the optimizer (through the scaler under fp16), zero the gradients.

        With accumulation, a call that ends mid-accumulation first rescales the gradients it summed to
        their mean, so the step is the same size as a full one.
        """
        optimizer, model = self.optimizer, self.model
        assert optimizer is not None and model is not None
        if self.accumulated < self.accumulate:
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(self.accumulate / self.accumulated)
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            how, limit = self.grad_clip
            params = [p for p in model.parameters() if p.grad is not None]
            if how == "norm":
                torch.nn.utils.clip_grad_norm_(params, limit)
            else:
                torch.nn.utils.clip_grad_value_(params, limit)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def default_step(model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                 ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The built-in step: forward and per-sample loss (under autocast), backward, and every ``accumulate``
    batches clip and optimizer step (see the module docstring)."""
    inputs, labels, _ = batch
    with ctx.autocast():
        output = model(inputs)
        losses = ctx.criterion(output, labels)
    loss = losses.float().mean() if ctx.loss_weight is None else losses.float().sum() * ctx.loss_weight
    ctx.backward(loss / ctx.accumulate if ctx.accumulate != 1 else loss)  # x / 1 is x: one autograd node less
    if ctx.steps_optimizer:
        ctx.optimizer_step()
    return losses, output


# -- naming and importing steps --------------------------------------------------------------------------------

def step_name(step: str | Step | None) -> str | None:
    """The name a step is recorded by: ``"package.module:function"`` (None: the built-in step).

    Raises:
        ConfigurationError: neither such a name nor a callable.
    """
    if step is None or step is default_step:
        return None
    if isinstance(step, str):
        if not _NAME.match(step):
            raise ConfigurationError(f"step must look like 'package.module:function', got {step!r}")
        return step
    if not callable(step):
        raise ConfigurationError(f"step must be a function or 'package.module:function', got {type(step).__name__}")
    module, qualname = getattr(step, "__module__", None), getattr(step, "__qualname__", None)
    if not module or not qualname:
        raise ConfigurationError(f"the step {step!r} has no importable name; pass 'package.module:function'")
    return f"{module}:{qualname}"


def import_step(name: str) -> Step:
    """Import a recorded step.

    Raises:
        ReplayError: it cannot be imported here (a function defined in a script or a notebook, a lambda,
            a nested function): pass ``step=`` to the replica, or replay from a later checkpoint.
    """
    module_name, _, qualname = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise ReplayError(
            f"the experiment trained with step {name!r}, which cannot be imported here ({e}). Install the package "
            "that defines it, or pass step= to the replica") from e
    if not callable(found):
        raise ReplayError(f"step {name!r} is not callable")
    return found


def resolve_step(step: str | Step | None) -> Step:
    """The step function of a constructor argument (a name is imported)."""
    if step is None:
        return default_step
    if isinstance(step, str):
        try:
            return import_step(step)
        except ReplayError as e:
            raise ConfigurationError(str(e)) from e
    return step


# -- options ---------------------------------------------------------------------------------------------------

def check_grad_clip(value: Any) -> dict[str, Any] | None:
    """``grad_clip`` as recorded: ``{"kind": "norm" | "value", "limit": x}`` (a bare number is a norm).

    Raises:
        ConfigurationError: not a positive finite limit, or another kind.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        kind, limit = value.get("kind"), value.get("limit")
    elif isinstance(value, tuple | list) and len(value) == 2:
        kind, limit = value
    else:
        kind, limit = "norm", value
    if kind not in ("norm", "value"):
        raise ConfigurationError(f"grad_clip clips the 'norm' or the 'value' of gradients, got {kind!r}: pass "
                                 "grad_clip=1.0 (a norm), ('norm', 1.0) or ('value', 0.5)")
    if isinstance(limit, bool) or not isinstance(limit, numbers.Real) or not math.isfinite(limit) or limit <= 0:
        raise ConfigurationError(f"grad_clip's limit must be a finite number > 0, got {limit!r}")
    return {"kind": kind, "limit": float(limit)}


_INTERVALS = ("batch", "epoch")


def check_scheduler(value: Any) -> dict[str, Any] | None:
    """``scheduler`` as recorded: ``{"class": "module.Class", "kwargs": {...}, "interval": "batch" | "epoch"}``.

    Accepts ``(SchedulerClass, kwargs, interval)`` or that dict (the class may be given by its dotted name).

    Raises:
        ConfigurationError: not a ``torch.optim.lr_scheduler.LRScheduler`` class, kwargs that are not JSON,
            or no interval.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        cls, kwargs, interval = value.get("class"), value.get("kwargs", {}), value.get("interval")
    elif isinstance(value, tuple | list) and len(value) == 3:
        cls, kwargs, interval = value
    else:
        raise ConfigurationError(
            "scheduler must be (SchedulerClass, kwargs, 'batch' | 'epoch'), e.g. "
            "(optim.lr_scheduler.StepLR, {'step_size': 10}, 'epoch'): say when it steps")
    cls = _scheduler_class(cls)
    if interval not in _INTERVALS:
        raise ConfigurationError(f"the scheduler steps per 'batch' or per 'epoch', got {interval!r}")
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"the scheduler's kwargs must be a dict, got {type(kwargs).__name__}")
    try:
        clean = normalise(dict(kwargs), "scheduler kwargs")
    except EventPayloadError as e:
        raise ConfigurationError(f"the scheduler's kwargs must be plain values (they are recorded): {e}") from e
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": clean, "interval": interval}


def _scheduler_class(cls: Any) -> type:
    if isinstance(cls, str):
        module_name, _, name = cls.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigurationError(f"scheduler class {cls!r} cannot be imported ({e})") from e
    base = torch.optim.lr_scheduler.LRScheduler
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigurationError(
            f"scheduler must be a torch.optim.lr_scheduler class such as StepLR or OneCycleLR, got {cls!r}")
    return cls


def make_scheduler(spec: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer) -> Any:
    """The scheduler a recorded spec describes, on ``optimizer`` (None without one).

    Raises:
        ConfigurationError: the class refuses its kwargs.
    """
    if spec is None:
        return None
    cls = _scheduler_class(spec["class"])
    try:
        return cls(optimizer, **spec["kwargs"])
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"{cls.__name__}(...) refused its arguments: {e}") from e


def check_compile(value: Any) -> dict[str, Any] | None:
    """``compile`` as recorded: None (eager), or torch.compile's keyword arguments (``True``: its defaults).

    Raises:
        ConfigurationError: neither a bool nor a dict of plain values.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"compile must be True, False or a dict of torch.compile arguments such as "
                                 f"{{'mode': 'reduce-overhead'}}, got {type(value).__name__}")
    try:
        return normalise(dict(value), "compile")
    except EventPayloadError as e:
        raise ConfigurationError(f"compile's arguments must be plain values (they are recorded): {e}") from e


def uncompiled(model: Any, compile: Any) -> tuple[Any, Any]:
    """A model given already compiled, as the module to edit and the compile setting to record: a
    ``torch.compile(model)`` wrapper is unwrapped, a ``model.compile()`` undone (both compile again with
    torch.compile's defaults, unless ``compile`` says otherwise)."""
    original = getattr(model, "_orig_mod", None)
    if original is not None and isinstance(model, torch.nn.Module):
        return original, compile if compile not in (None, False) else True
    if getattr(model, "_compiled_call_impl", None) is not None:
        model._compiled_call_impl = None  # surgery traces the module's own forward
        return model, compile if compile not in (None, False) else True
    return model, compile


@contextlib.contextmanager
def no_scheduler_warnings() -> Iterator[None]:
    """Schedulers warn when stepped before the optimizer (a call that ends mid-accumulation can): that
    order is recorded and replayed as it is."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*lr_scheduler.step\(\).*optimizer.step\(\)", category=UserWarning)
        yield
