"""TensorBoard logs of an experiment: one run per branch, curves against model age, a marker per operation.

Each branch of the lineage (:mod:`weightslab.history.branches`: ``c0``, ``c1-from-c0``, …)
is a run of its own, a folder under the experiment's log directory, so the step
(the model age) only grows within a run: after a ``load`` the age goes back, and
TensorBoard's loaders drop or purge points that go back within one run.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    DomainEvent,
    Evaluated,
    ExperimentCreated,
    ExperimentResumed,
    StepsTrained,
)
from weightslab.history.branches import BranchTracker
from weightslab.history.log import walk

if TYPE_CHECKING:
    from weightslab.experiment.runtime import Runtime

__all__ = ["MARKERS_PER_TAG", "Board", "TensorBoardLog"]

#: Curves reach the event file within this many seconds (operation markers at once).
FLUSH_SECS = 5
#: TensorBoard keeps 10 text samples per run and tag by default (``--samples_per_plugin``, and the
#: ``EventAccumulator``'s size guidance): markers go 10 to a tag, ``operations/01``, ``operations/02``, …
MARKERS_PER_TAG = 10


class TensorBoardLog:
    """A thin wrapper over one run's ``SummaryWriter`` with WeightsLab's tag names.

    Tags: ``train/loss``, ``train/accuracy``, ``eval/loss``, ``eval/accuracy``
    (step = model age in samples), ``neurons/layer_<i>`` (width per layer),
    ``trigger_rate/layer_<i>/<split>`` (histograms), and text ``operations/NN``
    (one marker per edit, deny/allow, dump, load and resume; :data:`MARKERS_PER_TAG` per tag).
    """

    def __init__(self, logdir: Path, markers: int = 0) -> None:
        """``markers``: how many markers the run holds already (written by an earlier process)."""
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=FLUSH_SECS)
        self._last_widths: tuple[tuple[int, ...], int] | None = None
        self._markers = markers

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
        tag = f"operations/{self._markers // MARKERS_PER_TAG + 1:02d}"
        self._markers += 1
        self._writer.add_text(tag, f"seq {seq}: {text}", global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Board:
    """An experiment's TensorBoard glue: curves after each train/eval call, a marker and the layer widths
    after every other event, each in the run of its branch. The writer starts on first use (a replica
    never writes); one run's writer is open at a time (a branch, once left, gets no more events).

    What to write is decided on the caller's thread (the branch, the age, the widths, the values); the
    writing itself (opening and closing a run's event file, which a load does for its new branch) runs in
    order on one background thread, so an event or a training call never waits for it. :meth:`close` waits
    for everything submitted; so does the interpreter's exit (the thread belongs to a
    ``ThreadPoolExecutor``). A failure to write a log is reported once as a warning: the experiment goes on.
    """

    def __init__(self, rt: Runtime, logdir: Path) -> None:
        self._rt = rt
        self.logdir = logdir
        self._log: TensorBoardLog | None = None  # the writer thread's
        self._run: str | None = None  # the run self._log writes
        self._branches: BranchTracker | None = None
        self._markers: Counter[str] = Counter()  # markers per run, this process's and those before it
        self._start: tuple[int, list[int]] | None = None  # (age, widths) a branch after a dump starts from
        self._executor: ThreadPoolExecutor | None = None
        self._failed = False
        self.quiet = False  # True: write nothing (the ranks > 0 of torch.distributed)

    def on_event(self, row: Any, event: DomainEvent) -> None:
        """Recorder listener: follow the branches; mark every event but training and evaluation (curves)."""
        branches = self._tracker(before=row.seq, first=event)
        branch = branches.advance(event)
        if isinstance(event, StepsTrained | Evaluated):
            return
        restarts = isinstance(event, ExperimentCreated | CheckpointLoaded | ExperimentResumed)
        self._submit(self._mark, (branch, self._markers[branch]), row.seq, event.summary(), self._rt.model_age,
                     self._rt.widths(), restarts, isinstance(event, CheckpointDumped))
        self._markers[branch] += 1

    def scalars(self, split: str, loss: float, acc: float) -> None:
        if self.quiet:
            return
        # No flush here: TensorBoard's writer thread flushes every few seconds (flush_secs), and a
        # flush per training call would make the training loop wait for a disk write.
        self._submit(self._scalars, self._run_now(), split, loss, acc, self._rt.model_age)

    def trigger_rates(self) -> None:
        if self.quiet:
            return
        rates = {(i, split): layer.trigger_rates(split).detach().clone()
                 for i, layer in enumerate(self._rt.model.layers) for split in ("train", "eval")}
        self._submit(self._trigger_rates, self._run_now(), rates, self._rt.model_age)

    def close(self) -> None:
        """Write everything submitted and close the open run's file (the board stays usable)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._log is not None:
            self._log.close()
            self._log, self._run = None, None

    # -- the writer thread -----------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-tensorboard")
        self._executor.submit(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        if self._failed:
            return
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 - a log that cannot be written must not stop the experiment
            self._failed = True
            warnings.warn(f"TensorBoard logs under {self.logdir} are no longer written: {error}", RuntimeWarning,
                          stacklevel=1)

    def _mark(self, run: tuple[str, int], seq: int, text: str, age: int, widths: list[int], restarts: bool,
              dumped: bool) -> None:
        if restarts:
            self._start = None  # the event sets the state: its branch starts here, not after the last dump
        log = self._writer(run)
        log.marker(seq, text, age)
        log.widths(widths, age)  # on disk within FLUSH_SECS, and at close()
        if dumped:
            self._start = (age, widths)  # where the branch after the dump starts

    def _scalars(self, run: tuple[str, int], split: str, loss: float, acc: float, age: int) -> None:
        self._writer(run).scalars(split, {"loss": loss, "accuracy": acc}, age)

    def _trigger_rates(self, run: tuple[str, int], rates: dict[tuple[int, str], torch.Tensor], age: int) -> None:
        self._writer(run).trigger_rates(rates, age)

    # -- branches and runs ---------------------------------------------------------------------------
    def _tracker(self, *, before: int | None = None, first: DomainEvent | None = None) -> BranchTracker:
        """The branch tracker, caught up on the log before seq ``before`` when this process did not see it
        (a reopened experiment: its first event here is the resume)."""
        if self._branches is None:
            self._branches = BranchTracker()
            if not isinstance(first, ExperimentCreated):
                for entry in walk(self._rt.store, self._rt.name, strict=False):
                    if before is None or entry.seq < before:
                        branch = self._branches.advance(entry.event)
                        self._markers[branch] += not isinstance(entry.event, StepsTrained | Evaluated)
        return self._branches

    def _run_now(self) -> tuple[str, int]:
        """The current branch's run and the markers it holds so far (what its log starts from if this item
        opens it)."""
        run = self._tracker().branch()
        return run, self._markers[run]

    def _writer(self, run_markers: tuple[str, int]) -> TensorBoardLog:
        """The log of a run (the writer thread's), given with the markers it held when the item writing to it
        was submitted: a new run closes the last one's file."""
        run, markers = run_markers
        if self._log is None or run != self._run:
            if self._log is not None:
                self._log.close()
            self._log, self._run = TensorBoardLog(self.logdir / run, markers), run
            if self._start is not None:  # the branch after a dump: its widths where it starts
                self._log.widths(self._start[1], self._start[0])
        self._start = None
        return self._log
