"""TensorBoard logs of an experiment: curves against model age, and a marker per operation."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TensorBoardLog"]

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
