"""Experiment settings: one dataclass, a comment per default."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

from weightslab.errors import ConfigurationError

__all__ = ["ExperimentConfig"]


@dataclass(frozen=True)
class ExperimentConfig:
    learning_rate: float = 1e-3  # the optimizer's lr (per-neuron multipliers scale it)
    batch_size: int = 32  # training batch size
    eval_batch_size: int | None = None  # None: same as batch_size
    seed: int = 0  # seeds the training sampler's own generator and, at creation, torch/numpy/python
    eval_every: int | None = None  # train_n_steps_with_eval_full: full eval every N steps; None: 4 per epoch
    num_workers: int = 0  # DataLoader workers (ids travel with the batch; stats stay here)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)  # extra optimizer arguments
    progress: bool | None = None  # tqdm bars: None = only when stderr is a terminal
    step: str | None = None  # "package.module:function" of a custom training step; None: the built-in one
    grad_clip: dict[str, Any] | None = None  # {"kind": "norm" | "value", "limit": x}: clip before each step
    accumulate: int = 1  # batches per optimizer step
    amp: str | None = None  # "bf16" | "fp16": autocast (fp16 with a GradScaler); None: full precision
    scheduler: dict[str, Any] | None = None  # {"class", "kwargs", "interval": "batch" | "epoch"}
    compile: dict[str, Any] | None = None  # torch.compile's keyword arguments ({}: its defaults); None: eager
    accept_requests: bool = True  # apply outside requests (weightslab request, the UI) at safe points

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")

        positive_int("batch_size", self.batch_size)
        positive_int("eval_batch_size", self.eval_batch_size, allow_none=True)
        positive_int("eval_every", self.eval_every, allow_none=True)
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
            raise ConfigurationError(f"learning_rate must be a finite number > 0, got {lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ConfigurationError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, numbers.Integral) \
                or self.num_workers < 0:
            raise ConfigurationError(f"num_workers must be an integer ≥ 0, got {self.num_workers!r}")
        positive_int("accumulate", self.accumulate)
        if not isinstance(self.accept_requests, bool):
            raise ConfigurationError(f"accept_requests must be True or False, got {self.accept_requests!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ConfigurationError(f"amp must be 'bf16', 'fp16' or None, got {self.amp!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("progress")
        return d
