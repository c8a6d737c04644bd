"""The Experiment: the tutorial's training engine, with every operation recorded.

Data flow of one training call::

    train_n_steps(n)
      ├─ loops.train_loop: batch (x, y, ids) → model (tracked layers keep their spatial sums, counted
      │        in bulk) → per-sample loss → backward → optimizer.step → results kept and applied to
      │        the ledger in bulk (batch_results.py)
      └─ recorder.append(StepsTrained(…))  one transaction: event + changed neuron_stats rows + blobs
                                          (sampler/RNG state at start); then the changed
                                          sample_stats rows go to the background writer

Edits made through ``exp.model``, ``exp.model.layers[i]`` or the datasets reach
the recorder as observers' records, become events the same way, and are
refused (recording nothing) when invalid.

The Experiment holds its live objects in a :class:`~weightslab.experiment.runtime.Runtime`,
which is all its helpers (recorder, checkpoints, replay, statistics, TensorBoard) see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightslab.errors import ConfigurationError, ReplayError
from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    EditEvent,
    Evaluated,
    ExperimentCreated,
    HyperparametersSet,
    SamplesAllowed,
    SamplesDenied,
    StepsTrained,
    event_class,
)
from weightslab.events.record import OperationRecord
from weightslab.events.requests import REQUEST_KINDS
from weightslab.experiment import allocator, distributed, environment, hyperparameters
from weightslab.experiment.batch_results import BatchResults
from weightslab.experiment.build import (
    adopt_conversion,
    build_runtime,
    check_arguments,
    check_device,
    code_version,
    conversion_record,
    derived_seed,
)
from weightslab.experiment.checkpoints import CheckpointManager, write_state
from weightslab.experiment.config import ExperimentConfig
from weightslab.experiment.criterion import Criterion, default_criterion
from weightslab.experiment.loops import OwnLoop, eval_loop, train_loop, train_start_state
from weightslab.experiment.recorder import Recorder
from weightslab.experiment.replay import Replayer, ReplayOutcome, ResumeReport, check_same_data, reopen
from weightslab.experiment.requests import Call, RequestQueue
from weightslab.experiment.statistics import Statistics
from weightslab.experiment.tensorboard import Board
from weightslab.experiment.training import (
    Step,
    check_compile,
    check_grad_clip,
    check_scheduler,
    resolve_step,
    step_name,
    uncompiled,
)
from weightslab.history.audit import log_frame
from weightslab.history.log import walk
from weightslab.history.requests import RequestRow
from weightslab.history.store import Store
from weightslab.surgery import NetworkWithOps, TrackingMode

__all__ = ["Experiment"]


def _finite_or_none(value: float) -> float | None:
    """A diverged run's NaN/inf loss is recorded as null: the event must be written all the same."""
    return value if np.isfinite(value) else None


class Experiment:
    """A recorded, editable training run (the tutorial's ``Experiment``).

    Args:
        model: a :class:`~weightslab.NetworkWithOps` (convert an existing model
            with :func:`weightslab.convert_to_ops`).
        optimizer_class: a ``torch.optim.Optimizer`` subclass, e.g. ``optim.Adam``.
        train_dataset, eval_dataset: map-style datasets of ``(input, label)``.
        device: where the model trains (``"cpu"``, ``"cuda"``, a ``torch.device``).
        learning_rate, batch_size: as in the tutorial.
        name: the experiment's name in the store; reopening a name resumes it.
        store: a directory (SQLite) or SQLAlchemy URL; default ``$WEIGHTSLAB_STORE`` or ``./store``.
        criterion: per-sample loss ``f(output, labels) -> (batch,)``; default NLL on log-probabilities.
        seed: seeds the sampler and, for a new experiment, torch/numpy/python RNGs.
        eval_every: full-eval interval (steps) of ``train_n_steps_with_eval_full``; default 4 per epoch.
        eval_batch_size, num_workers, optimizer_kwargs: loader and optimizer extras.
        tensorboard_dir: where TensorBoard logs go; default ``<store>/tensorboard/<name>``.
        recipe: ``"package.module:function"`` that rebuilds model and datasets (for replay tools).
        progress: show tqdm bars (default: only on a terminal).
        force: reopen even where events to re-execute were recorded with another torch version or
            device (which replay cannot set back); the resume event records the differences accepted.
        step: the training step, ``"package.module:function"`` or a function (recorded by its qualified
            name): ``step(model, (inputs, labels, ids), optimizer, ctx) -> (per-sample losses, outputs)``;
            default: the built-in one (see :mod:`weightslab.experiment.training`).
        grad_clip: clip gradients before each optimizer step: a max norm, ``("norm", x)`` or ``("value", x)``.
        accumulate: batches per optimizer step.
        amp: ``"bf16"`` or ``"fp16"`` (with a GradScaler): forward and loss under autocast.
        scheduler: ``(SchedulerClass, kwargs, "batch" | "epoch")``: a learning-rate scheduler stepped per
            batch (each optimizer step) or per epoch.
        compile: train the ``torch.compile``'d model (``True``, or a dict of torch.compile's arguments);
            edits apply to the model itself, and the compiled code re-traces when a shape changes. A model
            passed already compiled is unwrapped and compiled again with torch.compile's defaults.
        accept_requests: apply the requests filed from outside this process (``weightslab request``, the
            UI's buttons) at each safe point: the start of every public operation, hence between the chunks
            of ``train_n_steps_with_eval_full`` (see :meth:`apply_requests` and docs/requests.md).

    Random draws of an operation (new neurons' weights, a sampled deny) are seeded from ``seed`` and
    the event's seq unless the call passes ``seed=``: the same script gives the same history.

    Under an initialised ``torch.distributed`` process group (torchrun), every rank constructs the same
    experiment and makes the same calls: ``batch_size`` is per rank (the global batch is ``batch_size ×
    world_size``), training goes through DDP, rank 0 alone writes, and every event is agreed between the
    ranks first (see :mod:`weightslab.experiment.distributed` and docs/distributed.md).

    Raises:
        ConfigurationError: invalid arguments (nothing is written to the store).
        ReplayError: reopening needs events re-executed that were recorded in another environment
            (without ``force``).

    Example:
        >>> exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
        ...                  eval_dataset=eval_ds, device="cpu", learning_rate=1e-2, batch_size=256, name="x0")
        >>> exp.train_n_steps_with_eval_full(len(exp.train_loader))
    """

    def __init__(
        self,
        model: NetworkWithOps,
        optimizer_class: type[torch.optim.Optimizer],
        train_dataset: Any,
        eval_dataset: Any,
        device: str | torch.device = "cpu",
        learning_rate: float = 1e-3,
        batch_size: int = 32,
        name: str = "experiment",
        *,
        store: str | os.PathLike[str] | Store | None = None,
        criterion: Criterion | None = None,
        seed: int = 0,
        eval_every: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        tensorboard_dir: str | os.PathLike[str] | None = None,
        recipe: str | None = None,
        progress: bool | None = None,
        force: bool = False,
        step: str | Step | None = None,
        grad_clip: float | tuple[str, float] | None = None,
        accumulate: int = 1,
        amp: str | None = None,
        scheduler: Any = None,
        compile: bool | Mapping[str, Any] = False,
        accept_requests: bool = True,
        _replica: bool = False,
    ) -> None:
        model, compile = uncompiled(model, compile)
        self.config = ExperimentConfig(
            learning_rate=learning_rate, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
            eval_every=eval_every, num_workers=num_workers, optimizer_kwargs=dict(optimizer_kwargs or {}),
            progress=progress, step=step_name(step), grad_clip=check_grad_clip(grad_clip), accumulate=accumulate,
            amp=amp, scheduler=check_scheduler(scheduler), compile=check_compile(compile),
            accept_requests=accept_requests,
        )
        check_arguments(model, optimizer_class, train_dataset, eval_dataset, name, recipe)
        self.allocator = allocator.for_experiment()  # opt-in: weightslab.tune_malloc() / WEIGHTSLAB_TUNE_MALLOC=1
        self.name, self.recipe = name, recipe
        device = check_device(device)
        owned = not isinstance(store, Store)
        group = distributed.Group.current()  # None in one process (no collective call is ever made then)
        opened = (Store.open(store) if group is None else group.open_store(store)) if owned else store
        try:
            adopt_conversion(model, opened, name)  # the recorded experiment's convert_to_ops version, before anything
            rt = self._rt = build_runtime(name, model, optimizer_class, train_dataset, eval_dataset, device,
                                          self.config, criterion or default_criterion, opened, resolve_step(step))
            rt.probe_criterion()
            self._statistics = Statistics(rt)
            self._recorder = Recorder(opened, 0, 0, "" if _replica else code_version(), fingerprint=rt.fingerprint,
                                      statistics=self._statistics, detached=_replica)
            self.chkpt_manager = CheckpointManager(rt, self._recorder, self._statistics)
            self.chkpt_manager.guard = self._write_ahead
            self._replayer = Replayer(rt, self._recorder, self._statistics, self.chkpt_manager, force=force)
            self._requests = RequestQueue(opened, self._recorder, self._request_calls(),
                                          enabled=accept_requests and not _replica)
            root = opened.location.root or Path("store").resolve()
            self._board = Board(rt, Path(tensorboard_dir) if tensorboard_dir else root / "tensorboard" / name)
            if group is not None:  # every rank runs this constructor: rank 0 writes, the others follow
                distributed.join(group, rt, self._recorder, self._board, self._config_record())
                self._requests.enabled = False  # applied by rank 0 alone, a request would part the ranks
            self.resume_report: ResumeReport | None = None
            if _replica:  # a detached copy for replay tools: reads the store, never writes to it
                row = opened.get_experiment(name)
                self._attach(row.experiment_id)
                check_same_data(rt, row.config)
                return
            self._recorder.listeners.append(self._board.on_event)
            self._open_or_create()
            if group is None or group.writes:
                self._requests.release_stale()
        except BaseException:
            if owned:  # we opened it: do not leak its connections
                opened.close()
            raise
        rt.model.set_seed_source(self._next_seed)
        for split in rt.splits:
            split.ledger.set_seed_source(self._next_seed)
        rt.model.add_observer(self._on_model_op)
        rt.train.ledger.add_observer(self._on_train_data_op)
        rt.eval.ledger.add_observer(self._on_eval_data_op)

    # ------------------------------------------------------------------ set-up

    def _attach(self, experiment_id: int) -> None:
        """Point the runtime and the recorder at the experiment's row and the end of its log."""
        self._rt.experiment_id = self._recorder.experiment_id = experiment_id
        last = self._recorder.last_seq = self.store.last_seq(experiment_id)
        self._recorder.last_hash = self.store.event_hash(experiment_id, last) if last else None

    def _next_seed(self) -> int:
        return derived_seed(self.config.seed, self._recorder.last_seq + 1)

    def _config_record(self) -> dict[str, Any]:
        rt = self._rt
        return {
            "config": {**self.config.to_json(), **conversion_record(rt.model)},
            "optimizer_class": f"{type(rt.optimizer).__module__}.{type(rt.optimizer).__name__}",
            "model_class": f"{type(rt.model).__module__}.{type(rt.model).__qualname__}",
            "train_fingerprint": rt.train.ledger.fingerprint(),
            "eval_fingerprint": rt.eval.ledger.fingerprint(),
            "train_size": len(rt.train.ledger),
            "eval_size": len(rt.eval.ledger),
            "recipe": self.recipe,
        }

    def _open_or_create(self) -> None:
        store, rt = self.store, self._rt
        row = store.find_experiment(self.name)
        resume = row is not None and store.last_seq(row.experiment_id) > 0
        if rt.group is not None:  # rank 0 decides, before it writes anything
            resume = rt.group.share(resume)
            row = store.find_experiment(self.name) if resume else row
        if resume:
            assert row is not None
            self._attach(row.experiment_id)
            check_same_data(rt, row.config)
            self.resume_report = reopen(rt, self._replayer, self._recorder)
            return
        seed = self.config.seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        import random

        random.seed(seed)
        labels_known = all(split.ledger.record_labels() for split in rt.splits)
        config = self._config_record()
        # One transaction: the experiment's row, its initial state, a row for every sample and the creation
        # event exist together or not at all.
        # (under torch.distributed, rank 0's transaction; the other ranks get conn None and write nothing)
        with self._recorder.transaction() as conn:
            if conn is not None:
                if row is None:
                    row = store.create_experiment(self.name, config=config, recipe=self.recipe, conn=conn)
                else:  # registered by an older WeightsLab whose creator died before the first event
                    row = store.adopt_experiment(row.experiment_id, config=config, recipe=self.recipe, conn=conn)
                rt.experiment_id = self._recorder.experiment_id = row.experiment_id
                store.write_sample_rows(row.experiment_id, self._statistics.sample_jobs(everything=True), conn)
            manifest, fingerprint = write_state(rt, conn)
            self._recorder.append(ExperimentCreated(
                name=self.name, initial=manifest, **config, environment=environment.current(rt.device),
                labels_known=labels_known, fingerprint=rt.fingerprint_version), fingerprint=fingerprint, conn=conn)
        rt.experiment_id = self._recorder.experiment_id  # (ranks > 0: rank 0's, learned as its transaction ended)

    # ------------------------------------------------------------------ what users reach for

    @property
    def model(self) -> NetworkWithOps:
        return self._rt.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._rt.optimizer

    @property
    def train_loader(self) -> torch.utils.data.DataLoader:
        return self._rt.batches.train_loader

    @property
    def eval_loader(self) -> torch.utils.data.DataLoader:
        return self._rt.batches.eval_loader

    @property
    def store(self) -> Store:
        return self._rt.store

    @property
    def device(self) -> torch.device:
        return self._rt.device

    @property
    def criterion(self) -> Criterion:
        """The per-sample loss (assignable: later calls use the new one; replay uses the current one)."""
        return self._rt.criterion

    @criterion.setter
    def criterion(self, criterion: Criterion) -> None:
        self._rt.criterion = criterion

    @property
    def model_age(self) -> int:
        """Training samples the model has processed."""
        return self._rt.model_age

    @property
    def experiment_id(self) -> int:
        return self._rt.experiment_id

    @property
    def last_seq(self) -> int:
        """The seq of this experiment's latest event."""
        return self._recorder.last_seq

    @property
    def tensorboard_dir(self) -> Path:
        """Where this experiment's TensorBoard event files are written."""
        return self._board.logdir

    # ------------------------------------------------------------------ training

    @contextmanager
    def _write_ahead(self) -> Iterator[None]:
        """Around an operation that changes the live state and then appends its event: if anything fails
        before the event is committed (the store refuses the write, the disk is full, Ctrl-C), the state of
        the last recorded event is rebuilt from the log, every fingerprint verified, before the error goes
        on. Edits of the model and the data roll themselves back (their observers are the last step of
        their undo log); training, evaluation and loads cannot, so they come here.
        """
        self._recorder.check_writable()
        seq = self._recorder.last_seq
        self._statistics.keep_history()  # the ledgers' pass logs hold this operation's rows only
        try:
            yield
        except BaseException as error:
            if self._recorder.last_seq != seq:  # the event was committed: nothing to undo
                raise
            try:
                self._replayer.rebuild_latest(seq)
                self._recorder.write_changed_rows()  # rows written during the undone call: back as they were
            except BaseException as failed:
                self._recorder.broken = f"an operation failed ({error}) and rebuilding seq {seq} failed too ({failed})"
                raise ReplayError(f"the operation failed ({error}), and the state of the last event (seq {seq}) "
                                  f"could not be rebuilt from the store ({failed}); reopen the experiment") from error
            raise

    def train_n_steps(self, n: int) -> tuple[float, float]:
        """Train ``n`` batches (continuing the epoch; a new epoch starts when one ends).

        Either the call is recorded as a ``train`` event, or the state is as before it (see
        :meth:`_write_ahead`).

        Returns:
            (mean loss, accuracy) over the ``n`` batches.
        """
        n = self._check_steps(n)
        self._requests.safe_point()
        if self._rt.group is not None:
            self._rt.group.agree("exp.train_n_steps", n)
        with self._write_ahead():
            start = train_start_state(self._rt)
            age_before = self.model_age
            loss, acc, seen = train_loop(self._rt, n, on_flush=self._recorder.write_changed_rows)
            self._recorder.append(StepsTrained(
                steps=n, batch_size=self.config.batch_size, samples=seen, age_before=age_before,
                age_after=self.model_age, loss=_finite_or_none(loss), accuracy=acc), blobs=start)
        self._board.scalars("train", loss, acc)
        return loss, acc

    def train_n_steps_with_eval_full(self, n: int) -> tuple[float, float]:
        """Train ``n`` steps with a full evaluation every ``eval_every`` steps and at the end.

        ``eval_every`` defaults to a quarter of an epoch (``len(train_loader) // 4``, at least 1).

        Returns:
            (loss, accuracy) of the last full evaluation.
        """
        n = self._check_steps(n)
        every = self.config.eval_every or max(1, len(self.train_loader) // 4)
        done = 0
        result = (float("nan"), float("nan"))
        while done < n:
            chunk = min(every, n - done)
            self.train_n_steps(chunk)
            done += chunk
            result = self.eval_full()
        return result

    @contextmanager
    def training(self, *, step: str | Step | None = None, checkpoint: bool | None = None) -> Iterator[OwnLoop]:
        """Train with your own loop, recorded as one ``train`` event.

        Inside the block the model trains with tracking on; iterate ``exp.train_loader`` (batches of
        ``(inputs, labels, ids)`` from the ledger's sampler), train as you like, and report each batch with
        ``loop.record(ids, per_sample_losses, outputs, labels)``. When the block ends the event is appended
        with the state's fingerprint; if the block raises, the state of the last event is rebuilt.

        Replay re-executes such a call only if its step is named: ``step="package.module:function"`` (a
        function replay runs once per recorded batch, like the built-in loop's step). Without one it cannot,
        so the call is followed by a checkpoint (``checkpoint=False`` skips it: a reopen then cannot go past
        this call), and replay restores that checkpoint instead of re-running the loop.

        Example:
            >>> with exp.training() as loop:
            ...     for inputs, labels, ids in exp.train_loader:
            ...         optimizer.zero_grad(); out = exp.model(inputs); losses = criterion(out, labels)
            ...         losses.mean().backward(); optimizer.step()
            ...         loop.record(ids, losses, out, labels)
        """
        if self._rt.group is not None:
            raise ConfigurationError("exp.training() (your own loop) is not supported under torch.distributed yet: "
                                     "use train_n_steps, with step='package.module:function' for a custom step")
        name = step_name(step)
        if name is not None:
            resolve_step(name)  # replay must be able to import it: refuse now, not then
        self._requests.safe_point()
        rt = self._rt
        with self._write_ahead():
            start = train_start_state(rt)
            age_before = self.model_age
            rt.model.train()
            rt.model.tracking_mode = TrackingMode.TRAIN
            try:
                with rt.model.batched_trigger_counts(), BatchResults(rt.train.ledger, rt.device) as results:
                    loop = OwnLoop(rt, results)
                    yield loop
            finally:
                rt.model.tracking_mode = TrackingMode.DISABLED
                rt.batches.drop()  # the user's iterators ran the sampler: the next call starts from there
            loss, acc, seen = loop.means()
            self._recorder.append(StepsTrained(
                steps=loop.batches, batch_size=self.config.batch_size, samples=seen, age_before=age_before,
                age_after=self.model_age, loss=_finite_or_none(loss), accuracy=acc, step=name,
                replayable=name is not None), blobs=start)
        self._board.scalars("train", loss, acc)
        if name is None and checkpoint is not False:
            self.dump()

    def set_hyperparameters(self, **values: Any) -> None:
        """Set hyper-parameters for the calls that follow: ``learning_rate``, ``weight_decay``, ``momentum``
        (SGD's momentum, Adam's first beta), ``batch_size``. Recorded as a ``set_hyperparameters`` event.

        Raises:
            ConfigurationError: an unknown name or a bad value; nothing changes.

        Example:
            >>> exp.set_hyperparameters(learning_rate=1e-3, batch_size=128)
        """
        self._requests.safe_point()
        self._recorder.check_writable()
        checked = hyperparameters.check(self._rt, values)
        undo = hyperparameters.apply(self._rt, checked)
        try:
            self._recorder.append(HyperparametersSet(**checked))
        except BaseException:
            undo()
            raise

    def eval_n_steps(self, n: int) -> tuple[float, float]:
        """Evaluate ``n`` batches of the eval set (continuing where the last call stopped).

        Returns:
            (mean loss, accuracy).
        """
        return self._evaluate(steps=self._check_steps(n))

    def eval_full(self) -> tuple[float, float]:
        """Evaluate the whole (allowed) eval set. Returns (mean loss, accuracy)."""
        return self._evaluate(steps=None)

    def _evaluate(self, steps: int | None) -> tuple[float, float]:
        self._requests.safe_point()
        if self._rt.group is not None:
            self._rt.group.agree("exp.eval", steps)
        with self._write_ahead():
            age = self.model_age
            loss, acc, seen = eval_loop(self._rt, steps)
            self._recorder.append(Evaluated(steps=steps, full=steps is None, samples=seen,
                                            loss=_finite_or_none(loss), accuracy=acc, model_age=age))
        self._board.scalars("eval", loss, acc)
        self._board.trigger_rates()
        return loss, acc

    @staticmethod
    def _check_steps(n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ConfigurationError(f"the number of steps must be a positive integer, got {n!r}")
        return int(n)

    # ------------------------------------------------------------------ recording

    def _on_model_op(self, record: OperationRecord) -> None:
        self._recorder.record_operation(record)

    def _on_train_data_op(self, record: OperationRecord) -> None:
        self._rt.batches.reset()
        self._recorder.record_operation(record, split="train")

    def _on_eval_data_op(self, record: OperationRecord) -> None:
        self._rt.batches.reset()
        self._recorder.record_operation(record, split="eval")

    # ------------------------------------------------------------------ outside requests

    def apply_requests(self) -> list[RequestRow]:
        """Apply the requests filed for this experiment from outside (``weightslab request``, the UI), oldest
        first, now (also with ``accept_requests=False``). Each applied one is recorded as the event its API
        call records, naming the request, with its author as actor; one the API refuses changes nothing and
        is marked refused with the API's message.

        Returns:
            the requests handled, as they ended (``status`` "applied" with ``applied_seq``, or "refused" with
            ``error``).

        Example:
            >>> [(r.kind, r.status, r.applied_seq) for r in exp.apply_requests()]
            [('prune', 'applied', 12)]
        """
        return self._requests.apply()

    def _request_calls(self) -> dict[str, Call]:
        """The API call each requestable kind makes (what a script would call)."""
        def edit(kind: str) -> Call:
            cls = event_class(kind)
            assert issubclass(cls, EditEvent)
            return lambda args: getattr(self.model, cls.METHOD)(**cls.from_payload({"args": args}).call_args())

        def samples(deny: bool) -> Call:
            def call(args: dict[str, Any]) -> object:
                ds = (self._rt.train if args["split"] == "train" else self._rt.eval).ledger
                if args["mode"] == "where":
                    return (ds.deny_samples_where if deny else ds.allow_samples_where)(args["query"])
                if args["mode"] == "all":
                    return ds.allowlist_samples(None)
                return (ds.denylist_samples if deny else ds.allowlist_samples)(args["ids"])
            return call

        calls: dict[str, Call] = {kind: edit(kind) for kind, cls in
                                  ((k, event_class(k)) for k in REQUEST_KINDS) if issubclass(cls, EditEvent)}
        calls[SamplesDenied.KIND] = samples(deny=True)
        calls[SamplesAllowed.KIND] = samples(deny=False)
        calls[HyperparametersSet.KIND] = lambda args: self.set_hyperparameters(**args)
        calls[CheckpointDumped.KIND] = lambda args: self.dump()
        calls[CheckpointLoaded.KIND] = lambda args: self.load(args["checkpoint_id"])
        return calls

    # ------------------------------------------------------------------ public tools

    def display_stats(self) -> None:
        """Print the per-layer, per-neuron trigger report (dead and weak neurons flagged)."""
        print(self.model.stats_report())

    def dump(self) -> int:
        """Save a checkpoint; returns its id (0, 1, 2, … per experiment)."""
        self._requests.safe_point()
        if self._rt.group is not None:  # collective under torch.distributed
            self._rt.group.agree("exp.dump", None)
        return self.chkpt_manager.dump()

    def load(self, checkpoint_id: int) -> None:
        """Restore checkpoint ``checkpoint_id`` exactly; the next dump branches from it.

        Everything is checked before anything is restored (the checkpoint, its blobs, and that the store's
        log still ends where this session left it); a failed write of the ``load`` event restores the state
        before it."""
        self._requests.safe_point()
        if self._rt.group is not None:  # collective under torch.distributed
            self._rt.group.agree("exp.load", checkpoint_id)
        self.chkpt_manager.load(checkpoint_id)

    def snapshot(self) -> list[int]:
        """Write Parquet snapshots of sample_stats, neuron_stats and the sample history now."""
        if self._rt.group is not None and not self._rt.group.writes:
            return []  # rank 0 writes them
        self._recorder.wait()
        before = set(self.store.snapshot_ids(self.experiment_id))
        with self.store.transaction() as conn:
            self._statistics.write_snapshots(conn, self._recorder.last_seq)
        self._statistics.snapshots_committed()
        return [i for i in self.store.snapshot_ids(self.experiment_id) if i not in before]

    def events(self) -> pd.DataFrame:
        """The event log as a DataFrame: seq, time, kind, summary, who, code version, hashes, payload."""
        return log_frame(walk(self.store, self.store.get_experiment(self.name), strict=False))

    def sql(self, query: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query against the store; ``:experiment_id`` is bound to this experiment.

        Example:
            >>> exp.sql("SELECT sample_id, prediction_loss FROM sample_stats WHERE experiment_id = "
            ...         ":experiment_id ORDER BY prediction_loss DESC LIMIT 5")
        """
        self._recorder.wait()
        bound = {"experiment_id": self.experiment_id, **dict(params or {})}
        if not isinstance(query, str) or ":experiment_id" not in query:  # the store refuses a non-string
            bound.pop("experiment_id")
        return self.store.query(query, bound)

    def verify(self) -> bool:
        """True if this experiment's event hash chain verifies."""
        self._recorder.wait()
        return self.store.verify_chain(self.experiment_id).ok

    def replay_to(self, seq: int | None = None, *, from_start: bool = False) -> ReplayOutcome:
        """Rebuild the state at event ``seq`` (default: the last) from the nearest recorded state (or from
        the creation), re-executing and verifying every event after it. For replicas
        (:func:`weightslab.experiment.replica.replica`): nothing is recorded.

        Raises:
            ReplayError: ``seq`` outside the log (the message gives the range), or this is not a replica.
        """
        if not self._recorder.detached:
            raise ReplayError(
                "replay_to rebuilds a replica (weightslab.replica(store, name)); on a live experiment it would "
                "rewind the state behind the log's back. Use exp.load(checkpoint_id) to go back to a checkpoint")
        log = self._replayer.log()
        return self._replayer.rebuild(log.plan(seq, from_start=from_start), log)

    def capture(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The whole state as named tensors (live references: copy them to keep them) and its JSON part:
        what a checkpoint stores and a fingerprint proves (``model/…``, ``optim/…``, ``ledger/…``,
        ``sampler/…``, ``rng/…``; optimizer hyper-parameters, architecture, model age)."""
        return self._rt.capture()

    def flush(self) -> None:
        """Wait until the statistics rows of every event so far are in the store (reads through the
        experiment, dumps and ``close`` do this themselves)."""
        self._recorder.wait()

    def close(self) -> None:
        """Write pending statistics, flush TensorBoard. The experiment stays usable."""
        self._recorder.close()
        self._board.close()
        if self._rt.group is not None:  # collective: every rank returns once rank 0 has written everything
            self._rt.group.barrier()

    def __repr__(self) -> str:
        return (f"Experiment(name={self.name!r}, store={self.store.describe()!r}, age={self.model_age}, "
                f"events={self._recorder.last_seq})")
