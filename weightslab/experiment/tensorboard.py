"""TensorBoard logs of an experiment: curves against model age, and a marker per operation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from weightslab.events.domain import DomainEvent, Evaluated, StepsTrained

if TYPE_CHECKING:
    from weightslab.experiment.runtime import Runtime

__all__ = ["Board", "TensorBoardLog"]

#: Curves reach the event file within this many seconds (operation markers at once).
FLUSH_SECS = 5


class TensorBoardLog:
    """A thin wrapper over ``SummaryWriter`` with WeightsLab's tag names.

    Tags: ``train/loss``, ``train/accuracy``, ``eval/loss``, ``eval/accuracy``
    (step = model age in samples), ``neurons/layer_<i>`` (width per layer),
    ``trigger_rate/layer_<i>/<split>`` (histograms), and text ``operations``
    (one marker per edit, deny/allow, dump and load).
    """

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=FLUSH_SECS)
        self._last_widths: tuple[tuple[int, ...], int] | None = None

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self._writer.add_scalar(f"{prefix}/{k}", v, global_step=step)

    def widths(self, widths: list[int], step: int) -> None:
        """Log each layer's width at ``step`` (once: the same widths at the same step add no point)."""
        key = (tuple(widths), step)
        if key == self._last_widths:
            return
        self._last_widths = key
        for i, w in enumerate(widths):
            self._writer.add_scalar(f"neurons/layer_{i}", w, global_step=step)

    def trigger_rates(self, rates: dict[tuple[int, str], torch.Tensor], step: int) -> None:
        for (layer, split), r in rates.items():
            if r.numel():
                self._writer.add_histogram(f"trigger_rate/layer_{layer}/{split}", r.float().cpu(), global_step=step)

    def marker(self, seq: int, text: str, step: int) -> None:
        self._writer.add_text("operations", f"seq {seq}: {text}", global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Board:
    """An experiment's TensorBoard glue: curves after each train/eval call, a marker and the layer widths
    after every other event. The writer starts on first use (a replica never writes)."""

    def __init__(self, rt: Runtime, logdir: Path) -> None:
        self._rt = rt
        self.logdir = logdir
        self._log: TensorBoardLog | None = None

    def _writer(self) -> TensorBoardLog:
        if self._log is None:
            self._log = TensorBoardLog(self.logdir)
        return self._log

    def on_event(self, row: Any, event: DomainEvent) -> None:
        """Recorder listener: mark every event but training and evaluation (those are curves)."""
        if isinstance(event, StepsTrained | Evaluated):
            return
        age = self._rt.model_age
        self._writer().marker(row.seq, event.summary(), age)
        self._writer().widths(self._rt.widths(), age)  # on disk within FLUSH_SECS, and at close()

    def scalars(self, split: str, loss: float, acc: float) -> None:
        # No flush here: TensorBoard's writer thread flushes every few seconds (flush_secs), and a
        # flush per training call would make the training loop wait for a disk write.
        self._writer().scalars(split, {"loss": loss, "accuracy": acc}, self._rt.model_age)

    def trigger_rates(self) -> None:
        rates = {(i, split): layer.trigger_rates(split)
                 for i, layer in enumerate(self._rt.model.layers) for split in ("train", "eval")}
        self._writer().trigger_rates(rates, self._rt.model_age)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
