"""The training and evaluation loops: what one call of ``train_n_steps`` / ``eval_*`` runs.

Each loop reads top to bottom. Side concerns are named helpers: trigger counting
in bulk (``model.batched_trigger_counts``), per-batch results applied to the
ledger in bulk (:class:`~weightslab.experiment.batch_results.BatchResults`), and
the batches themselves (:class:`~weightslab.experiment.loaders.Batches`). The same
functions re-execute a recorded call during replay.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from weightslab.errors import ConfigurationError
from weightslab.experiment.batch_results import BatchResults
from weightslab.experiment.rng import capture_rng
from weightslab.experiment.state import to_tensor
from weightslab.experiment.training import StepContext, default_step, no_scheduler_warnings
from weightslab.surgery import TrackingMode

if TYPE_CHECKING:
    from weightslab.experiment.runtime import Runtime

__all__ = ["LoopResult", "OwnLoop", "eval_loop", "step_context", "train_loop", "train_start_state"]

#: (mean loss, accuracy, samples) of one loop.
LoopResult = tuple[float, float, int]


def _means(results: BatchResults) -> LoopResult:
    seen = max(results.seen, 1)
    return float(results.loss_sum) / seen, float(results.correct) / seen, results.seen


def _progress(rt: Runtime, steps: range, desc: str) -> Any:
    show = rt.config.progress if rt.config.progress is not None else sys.stderr.isatty()
    if not show:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=desc, leave=False)


def _age_now(rt: Runtime) -> int | torch.Tensor:
    """The model age before a batch: an int on the CPU; on an accelerator a copy of the device
    counter, read when the loop's results are flushed (no host synchronisation a batch)."""
    age = rt.model.model_age
    return int(age) if age.device.type == "cpu" else age.clone()


def step_context(rt: Runtime) -> StepContext:
    """The context of one training call's steps (see :mod:`~weightslab.experiment.training`)."""
    clip = rt.config.grad_clip
    return StepContext(criterion=rt.criterion, device=rt.device, amp=rt.config.amp, scaler=rt.scaler,
                       accumulate=rt.config.accumulate, grad_clip=(clip["kind"], clip["limit"]) if clip else None,
                       optimizer=rt.optimizer, model=rt.model)


def train_loop(rt: Runtime, n: int, step: Any = None, on_flush: Callable[[], None] | None = None) -> LoopResult:
    """Train ``n`` batches with ``step`` (default: the experiment's), continuing the epoch; returns
    (mean loss, accuracy, samples). ``on_flush`` is called each time the results of some batches were applied
    to the ledger inside the loop (see :class:`~weightslab.experiment.batch_results.BatchResults`)."""
    model, optimizer = rt.model, rt.optimizer
    step = step or rt.step
    ctx = step_context(rt)
    per = rt.config.scheduler["interval"] if rt.scheduler is not None else None
    group = rt.group  # under torch.distributed (experiment/distributed.py); None in one process
    if group is not None:
        group.wrap(rt)  # DDP over the parameters as they are now
        counted = group.counters(model)
    model.train()
    model.tracking_mode = TrackingMode.TRAIN
    optimizer.zero_grad(set_to_none=True)
    try:
        gather = group.gather_batches if group is not None else None
        with model.batched_trigger_counts(), \
                BatchResults(rt.train.ledger, rt.device, gather=gather, on_flush=on_flush) as results, \
                no_scheduler_warnings():
            for i in _progress(rt, range(n), f"train {rt.name}"):
                epoch = rt.batches.train_epoch
                inputs, labels, ids = rt.batches.next_train()
                if per == "epoch" and epoch and rt.batches.train_epoch > epoch:
                    rt.scheduler.step()  # an epoch ended before this batch
                ctx.index, ctx.last, ctx.age = i, i == n - 1, _age_now(rt)
                if group is not None:  # this rank trains on its share of the global batch
                    ctx.loss_weight = group.world_size / rt.batches.last_global
                losses, output = step(rt.forward, (inputs, labels, ids), optimizer, ctx)
                if group is not None:  # the age counts the global batch
                    model.model_age.add_(rt.batches.last_global - len(ids))
                if per == "batch" and ctx.steps_optimizer:
                    rt.scheduler.step()
                _check_step(step, losses, output, ids)
                results.add(ids, losses, output, labels, ctx.age)
    finally:
        model.tracking_mode = TrackingMode.DISABLED
        rt.batches.sync_train_position()
    if group is not None:
        group.sync_after_loop(model, counted)
    return _means(results)


def _check_step(step: Any, losses: Any, output: Any, ids: torch.Tensor) -> None:
    if step is default_step:
        return
    n = len(ids)
    if not isinstance(losses, torch.Tensor) or losses.shape != (n,) or not isinstance(output, torch.Tensor) \
            or output.shape[:1] != (n,):
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ConfigurationError(
            f"the step {getattr(step, '__qualname__', step)} must return (per-sample losses of shape ({n},), outputs of {n} rows); "
            f"got losses {got}. Return the losses before averaging them (reduction='none')")


def eval_loop(rt: Runtime, steps: int | None) -> LoopResult:
    """Evaluate ``steps`` batches (None: every allowed eval sample) under no_grad, restoring the mode
    the model was in; returns (mean loss, accuracy, samples)."""
    model = rt.model
    was_training = model.training
    model.eval()
    model.tracking_mode = TrackingMode.EVAL
    age = rt.model_age
    autocast = step_context(rt).autocast()
    group = rt.group
    counted = group.counters(model) if group is not None else []
    try:
        with torch.no_grad(), model.batched_trigger_counts(), BatchResults(
                rt.eval.ledger, rt.device, gather=group.gather_batches if group is not None else None) as results:
            batches = rt.batches.full_eval() if steps is None else (
                rt.batches.next_eval() for _ in _progress(rt, range(steps), f"eval {rt.name}"))
            for inputs, labels, ids in batches:
                with autocast:
                    output = rt.forward(inputs)
                    losses = rt.criterion(output, labels)
                results.add(ids, losses, output, labels, age)
    finally:
        model.tracking_mode = TrackingMode.DISABLED
        model.train(was_training)
    if group is not None:
        group.sync_after_loop(model, counted)
    return _means(results)


class OwnLoop:
    """What a hand-written training loop reports inside ``with exp.training() as loop`` (see
    :meth:`weightslab.Experiment.training`): each batch's ids, per-sample losses, outputs and labels."""

    def __init__(self, rt: Runtime, results: BatchResults) -> None:
        self._rt = rt
        self._results = results
        self.batches = 0

    def record(self, ids: torch.Tensor, losses: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor, *,
               age: int | None = None) -> None:
        """Record one trained batch: ``losses`` per sample (before averaging), the model's ``outputs``,
        and the model ``age`` it predicted at (default: the age now less the batch: call it after the
        forward pass).

        Raises:
            ConfigurationError: not one loss, output row and label per id.
        """
        if age is None:
            age = max(self._rt.model_age - len(ids), 0)
        self._results.add(ids, losses.detach(), outputs.detach(), labels, age)
        self.batches += 1

    def means(self) -> LoopResult:
        return _means(self._results)


def train_start_state(rt: Runtime) -> dict[str, torch.Tensor]:
    """The sampler and RNG state at the start of a training call: what replay needs to re-run it."""
    out = {f"sampler/{k}": to_tensor(v) for k, v in rt.train.sampler.state_arrays().items()}
    out.update({f"rng/{k}": v for k, v in capture_rng().items()})
    return out
