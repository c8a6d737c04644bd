"""The training and evaluation loops: what one call of ``train_n_steps`` / ``eval_*`` runs.

Each loop reads top to bottom. Side concerns are named helpers: trigger counting
in bulk (``model.batched_trigger_counts``), per-batch results applied to the
ledger in bulk (:class:`~weightslab.experiment.batch_results.BatchResults`), and
the batches themselves (:class:`~weightslab.experiment.loaders.Batches`). The same
functions re-execute a recorded call during replay.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from weightslab.experiment.batch_results import BatchResults
from weightslab.experiment.rng import capture_rng
from weightslab.experiment.state import to_tensor
from weightslab.surgery import TrackingMode

if TYPE_CHECKING:
    from weightslab.experiment.runtime import Runtime

__all__ = ["LoopResult", "eval_loop", "train_loop", "train_start_state"]

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


def train_loop(rt: Runtime, n: int) -> LoopResult:
    """Train ``n`` batches, continuing the epoch; returns (mean loss, accuracy, samples)."""
    model, optimizer, criterion = rt.model, rt.optimizer, rt.criterion
    model.train()
    model.tracking_mode = TrackingMode.TRAIN
    try:
        with model.batched_trigger_counts(), BatchResults(rt.train.ledger, rt.device) as results:
            for _ in _progress(rt, range(n), f"train {rt.name}"):
                inputs, labels, ids = rt.batches.next_train()
                age_at_prediction = _age_now(rt)
                optimizer.zero_grad(set_to_none=True)
                output = model(inputs)
                losses = criterion(output, labels)
                losses.mean().backward()
                optimizer.step()
                results.add(ids, losses, output, labels, age_at_prediction)
    finally:
        model.tracking_mode = TrackingMode.DISABLED
        rt.batches.sync_train_position()
    return _means(results)


def eval_loop(rt: Runtime, steps: int | None) -> LoopResult:
    """Evaluate ``steps`` batches (None: every allowed eval sample) under no_grad, restoring the mode
    the model was in; returns (mean loss, accuracy, samples)."""
    model = rt.model
    was_training = model.training
    model.eval()
    model.tracking_mode = TrackingMode.EVAL
    age = rt.model_age
    try:
        with torch.no_grad(), model.batched_trigger_counts(), BatchResults(rt.eval.ledger, rt.device) as results:
            batches = rt.batches.full_eval() if steps is None else (
                rt.batches.next_eval() for _ in _progress(rt, range(steps), f"eval {rt.name}"))
            for inputs, labels, ids in batches:
                output = model(inputs)
                results.add(ids, rt.criterion(output, labels), output, labels, age)
    finally:
        model.tracking_mode = TrackingMode.DISABLED
        model.train(was_training)
    return _means(results)


def train_start_state(rt: Runtime) -> dict[str, torch.Tensor]:
    """The sampler and RNG state at the start of a training call: what replay needs to re-run it."""
    out = {f"sampler/{k}": to_tensor(v) for k, v in rt.train.sampler.state_arrays().items()}
    out.update({f"rng/{k}": v for k, v in capture_rng().items()})
    return out
