"""The Experiment: the tutorial's training engine, with every operation recorded.

Data flow of one training call::

    train_n_steps(n)
      ├─ loop: batch (x, y, ids) → model (tracked layers keep their spatial sums, counted in
      │        bulk: model.batched_trigger_counts) → per-sample loss → backward → optimizer.step
      │        → results.add(ids, loss, output, label, age)   (kept; every 2^16 samples and at
      │          the end: one ledger.update_batch and the loss/accuracy sums, batch_results.py)
      └─ recorder.append("train", …)  one transaction: event + changed neuron_stats rows
                                      + blobs (sampler/RNG state at start); then the dirty
                                      sample_stats rows go to the background writer

Edits made through ``exp.model``, ``exp.model.layers[i]`` or the datasets reach
the recorder as observers' records, become events the same way, and are
refused (recording nothing) when invalid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from weightslab import __version__
from weightslab.errors import ConfigurationError
from weightslab.events.record import OperationRecord
from weightslab.experiment import capture as capture_mod
from weightslab.experiment.allocator import MallocTuning, tune_malloc
from weightslab.experiment.batch_results import BatchResults
from weightslab.experiment.checkpoints import CheckpointManager, snapshot_sources, write_state
from weightslab.experiment.config import ExperimentConfig
from weightslab.experiment.criterion import Criterion, check_criterion, default_criterion
from weightslab.experiment.recorder import Recorder
from weightslab.experiment.rng import capture_rng
from weightslab.experiment.tensorboard import TensorBoardLog
from weightslab.history.eventlog import EventRow
from weightslab.history.snapshots import SnapshotWriter
from weightslab.history.store import Store
from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.ledger.batching import collate
from weightslab.surgery import NetworkWithOps, TrackingMode

__all__ = ["Experiment"]


def _code_version() -> str:
    """weightslab version, plus the git revision of the user's working tree when there is one."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=2, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"weightslab {__version__}" + (f" git {rev}" if rev else "")


def _finite_or_none(value: float) -> float | None:
    """A diverged run's NaN/inf loss is recorded as null: the event must be written all the same."""
    return value if np.isfinite(value) else None


def _means(results: BatchResults) -> tuple[float, float, int]:
    """(mean loss, accuracy, samples) of a finished loop."""
    seen = max(results.seen, 1)
    return float(results.loss_sum) / seen, float(results.correct) / seen, results.seen


def _check_device(device: Any) -> torch.device:
    """``device`` as a torch.device that exists on this machine, else ConfigurationError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigurationError(f"device {device!r} is not a device: use e.g. device='cpu' or 'cuda' ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} is not available on this machine (no CUDA); use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError(f"device {device!r} is not available on this machine; use device='cpu'")
    return dev


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

    Raises:
        ConfigurationError: invalid arguments (nothing is written to the store).

    The first Experiment of a process raises glibc's malloc thresholds, so CPU training steps
    reuse the memory they free instead of faulting it back in (``exp.allocator`` says what was
    done or why not; ``WEIGHTSLAB_TUNE_MALLOC=0`` leaves malloc alone; see
    :mod:`weightslab.experiment.allocator`).

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
        _replica: bool = False,
    ) -> None:
        self.config = ExperimentConfig(
            learning_rate=learning_rate, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
            eval_every=eval_every, num_workers=num_workers, optimizer_kwargs=dict(optimizer_kwargs or {}),
            progress=progress,
        )
        self._check_arguments(model, optimizer_class, train_dataset, eval_dataset, name, recipe)
        # Process-wide, once: CPU steps reuse the memory they free instead of faulting it back in
        # (weightslab/experiment/allocator.py; WEIGHTSLAB_TUNE_MALLOC=0 leaves malloc alone).
        self.allocator: MallocTuning = tune_malloc()
        self.name = name
        self.recipe = recipe
        self.device = _check_device(device)
        self.criterion: Criterion = criterion or default_criterion
        self.model = model.to(self.device)
        try:
            self.optimizer = optimizer_class(self.model.parameters(), lr=learning_rate,
                                             **self.config.optimizer_kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigurationError(f"{optimizer_class.__name__}(...) refused its arguments: {e}") from e
        self.model.attach_optimizer(self.optimizer)

        self._train_ds = LedgeredDataset(train_dataset, "train")
        self._eval_ds = LedgeredDataset(eval_dataset, "eval")
        self._train_sampler = LedgerSampler(self._train_ds, seed=seed, shuffle=True)
        self._eval_sampler = LedgerSampler(self._eval_ds, seed=seed, shuffle=False)
        workers = self.config.num_workers
        # Loaders get their own generator: starting an iterator then draws its worker seed from it,
        # not from torch's global RNG, so when iterators are (re)started cannot change training.
        self._loader_generator = torch.Generator().manual_seed(seed)
        # collate: a TensorDataset's batch arrives already collated (see weightslab.ledger.batching)
        self.train_loader = DataLoader(self._train_ds, batch_size=batch_size, sampler=self._train_sampler,
                                       num_workers=workers, pin_memory=self.device.type == "cuda",
                                       generator=self._loader_generator, collate_fn=collate)
        self.eval_loader = DataLoader(self._eval_ds, batch_size=self.config.eval_batch_size or batch_size,
                                      sampler=self._eval_sampler, num_workers=workers,
                                      pin_memory=self.device.type == "cuda", generator=self._loader_generator,
                                      collate_fn=collate)
        self._train_iter: Iterator[Any] | None = None
        self._eval_iter: Iterator[Any] | None = None
        self._history_chunks: list[pd.DataFrame] = []  # per-pass rows awaiting the next snapshot
        self._probe_criterion()

        self.store = store if isinstance(store, Store) else Store.open(store)
        self.chkpt_manager = CheckpointManager(self)
        self._snapshot_writer = SnapshotWriter(self.store.blobs)
        self._tb: TensorBoardLog | None = None
        self._tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir else None
        try:
            if _replica:  # a detached copy for replay tools: reads the store, never writes to it
                row = self.store.get_experiment(name)
                self._experiment_id = row.experiment_id
                self._recorder = Recorder(self, row.experiment_id, self.store.last_seq(row.experiment_id), "",
                                          detached=True)
                self.resume_report = None
                return
            self._open_or_create(seed)
        except BaseException:
            if not isinstance(store, Store):  # we opened it: do not leak its connections
                self.store.close()
            raise
        self.model.add_observer(self._on_model_op)
        self._train_ds.add_observer(self._on_train_data_op)
        self._eval_ds.add_observer(self._on_eval_data_op)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _check_arguments(model: Any, optimizer_class: Any, train_dataset: Any, eval_dataset: Any,
                         name: Any, recipe: Any) -> None:
        if not isinstance(model, NetworkWithOps):
            raise ConfigurationError(
                f"model must be a weightslab.NetworkWithOps, got {type(model).__name__}. Build it from the "
                "*WithNeuronOps layers, or convert an existing model: model = weightslab.convert_to_ops(model)"
            )
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise ConfigurationError(
                f"optimizer_class must be a torch.optim.Optimizer subclass such as optim.Adam, got "
                f"{optimizer_class!r}"
            )
        for what, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            try:
                n = len(ds)
            except TypeError as e:
                raise ConfigurationError(f"{what} must be a map-style dataset with a length") from e
            if n == 0:
                raise ConfigurationError(f"{what} is empty: an experiment needs at least one sample in each split")
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        if recipe is not None and (not isinstance(recipe, str) or ":" not in recipe):
            raise ConfigurationError(f"recipe must look like 'package.module:function', got {recipe!r}")

    def _probe_criterion(self) -> None:
        """Run two samples of each split through model and criterion before anything is recorded.

        The samples are read by index and collated here: a DataLoader iterator would draw its seed
        from torch's global generator, so a refused constructor would change the caller's RNG.
        """
        from torch.utils.data import default_collate

        was_training, mode = self.model.training, self.model.tracking_mode
        self.model.eval()
        self.model.tracking_mode = TrackingMode.DISABLED
        try:
            for ds in (self._train_ds, self._eval_ds):
                x, y, _ = default_collate([ds[i] for i in range(min(2, len(ds)))])
                with torch.no_grad():
                    out = self.model(x.to(self.device))
                check_criterion(self.criterion, out, y.to(self.device))
        finally:
            self.model.train(was_training)
            self.model.tracking_mode = mode

    def _config_record(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "optimizer_class": f"{type(self.optimizer).__module__}.{type(self.optimizer).__name__}",
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "train_fingerprint": self._train_ds.fingerprint(),
            "eval_fingerprint": self._eval_ds.fingerprint(),
            "train_size": len(self._train_ds),
            "eval_size": len(self._eval_ds),
            "recipe": self.recipe,
        }

    def _open_or_create(self, seed: int) -> None:
        from weightslab.experiment import resume

        row = self.store.find_experiment(self.name)
        if row is None or self.store.last_seq(row.experiment_id) == 0:
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            import random

            random.seed(seed)
            config = self._config_record()
            if row is None:
                row = self.store.create_experiment(self.name, config=config, recipe=self.recipe)
            else:  # its creator died (e.g. SIGKILL) before recording the creation event: finish creating it
                row = self._adopt_unrecorded(row.experiment_id, config)
            self._experiment_id = row.experiment_id
            self._recorder = Recorder(self, row.experiment_id, 0, _code_version())
            with self.store.transaction() as conn:
                manifest, digest, parts, _ = write_state(self, conn)
            # no sample rows yet: a sample gets its row when it is first seen, denied or allowed
            self._recorder.append("create", {"name": self.name, "initial": manifest, **config},
                                  fingerprint=(digest, parts))
            self.resume_report = None
        else:
            self._experiment_id = row.experiment_id
            self._recorder = Recorder(self, row.experiment_id, self.store.last_seq(row.experiment_id),
                                      _code_version())
            resume.check_same_data(self, row.config)
            self.resume_report = resume.resume(self)

    def _adopt_unrecorded(self, experiment_id: int, config: dict[str, Any]) -> Any:
        """Take over a registered name with no events (nothing of it was recorded): record our config."""
        from sqlalchemy import update

        from weightslab.events.codec import normalise
        from weightslab.history.schema import Experiment as ExperimentTable

        with self.store.transaction() as conn:
            conn.execute(update(ExperimentTable).where(ExperimentTable.experiment_id == experiment_id)
                         .values(config=normalise(config, "config"), recipe=self.recipe))
        return self.store.get_experiment(self.name)

    # ------------------------------------------------------------------ properties

    @property
    def model_age(self) -> int:
        """Training samples the model has processed."""
        return self.model.age

    @property
    def experiment_id(self) -> int:
        return self._experiment_id

    def _splits(self) -> list[tuple[str, LedgeredDataset, LedgerSampler]]:
        return [("train", self._train_ds, self._train_sampler), ("eval", self._eval_ds, self._eval_sampler)]

    def _widths(self) -> list[int]:
        return [int(layer.neuron_count) for layer in self.model.layers]

    def _neuron_counters(self) -> list[tuple[int, str, str, np.ndarray, np.ndarray]]:
        """(layer index, layer name, split, trigger counts, seen counts) per layer and split."""
        names = {id(m): n for n, m in self.model.named_modules()}
        out = []
        for li, layer in enumerate(self.model.layers):
            lname = names.get(id(layer), f"layer{li}")
            for split in ("train", "eval"):
                out.append((li, lname, split, getattr(layer, f"{split}_trigger_count").cpu().numpy(),
                            getattr(layer, f"{split}_seen_count").cpu().numpy()))
        return out

    def _neuron_frame(self, counters: list[tuple[int, str, str, np.ndarray, np.ndarray]] | None = None
                      ) -> pd.DataFrame:
        """All neuron counters (default: the current ones) as the rows of ``neuron_stats`` (for snapshots)."""
        counters = self._neuron_counters() if counters is None else counters
        sizes = [len(trig) for _, _, _, trig, _ in counters]

        def repeat(values: list[Any]) -> np.ndarray:
            return np.repeat(np.asarray(values), sizes)

        return pd.DataFrame({  # one frame from whole columns: a frame per layer costs ~1 ms each
            "layer_index": repeat([c[0] for c in counters]).astype(np.int64),
            "neuron_index": np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]),
            "split": repeat([c[2] for c in counters]).astype(object),
            "layer_name": repeat([c[1] for c in counters]).astype(object),
            "trigger_count": np.concatenate([c[3] for c in counters]).astype(np.int64),
            "seen_samples": np.concatenate([c[4] for c in counters]).astype(np.int64),
        })

    def _progress(self, iterable: range, desc: str) -> Any:
        show = self.config.progress if self.config.progress is not None else sys.stderr.isatty()
        if not show:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, leave=False)

    # ------------------------------------------------------------------ training

    def train_n_steps(self, n: int) -> tuple[float, float]:
        """Train ``n`` batches (continuing the epoch; a new epoch starts when one ends).

        Returns:
            (mean loss, accuracy) over the ``n`` batches.
        """
        n = self._check_steps(n)
        start = self._train_start_state()
        age_before = self.model_age
        loss, acc, seen = self._train_loop(n)
        self._recorder.append("train", {
            "steps": n, "batch_size": self.config.batch_size, "samples": seen,
            "age_before": age_before, "age_after": self.model_age, "loss": _finite_or_none(loss), "accuracy": acc,
        }, blobs=start)
        self._log_scalars("train", loss, acc)
        return loss, acc

    def _train_loop(self, n: int) -> tuple[float, float, int]:
        """The training loop proper: ``n`` batches; returns (mean loss, accuracy, samples)."""
        self.model.train()
        self.model.tracking_mode = TrackingMode.TRAIN
        try:
            with self.model.batched_trigger_counts(), BatchResults(self._train_ds, self.device) as results:
                for _ in self._progress(range(n), f"train {self.name}"):
                    inputs, labels, ids = self._next_train_batch()
                    age_at_prediction = self._age_now()
                    self.optimizer.zero_grad(set_to_none=True)
                    output = self.model(inputs)
                    losses = self.criterion(output, labels)
                    losses.mean().backward()
                    self.optimizer.step()
                    results.add(ids, losses, output, labels, age_at_prediction)
        finally:
            self.model.tracking_mode = TrackingMode.DISABLED
            self._sync_train_position()
        return _means(results)

    def _age_now(self) -> int | torch.Tensor:
        """The model age before a batch: an int on the CPU; on an accelerator a copy of the device
        counter, read when the loop's results are flushed (no host synchronisation a batch)."""
        age = self.model.model_age
        return int(age) if age.device.type == "cpu" else age.clone()

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

    def eval_n_steps(self, n: int) -> tuple[float, float]:
        """Evaluate ``n`` batches of the eval set (continuing where the last call stopped).

        Returns:
            (mean loss, accuracy).
        """
        n = self._check_steps(n)
        return self._evaluate(steps=n)

    def eval_full(self) -> tuple[float, float]:
        """Evaluate the whole (allowed) eval set. Returns (mean loss, accuracy)."""
        return self._evaluate(steps=None)

    def _evaluate(self, steps: int | None) -> tuple[float, float]:
        age = self.model_age
        loss, acc, seen = self._eval_loop(steps)
        self._recorder.append("eval", {"steps": steps, "full": steps is None, "samples": seen,
                                       "loss": _finite_or_none(loss), "accuracy": acc, "model_age": age})
        self._log_scalars("eval", loss, acc)
        self._log_trigger_rates()
        return loss, acc

    def _eval_loop(self, steps: int | None) -> tuple[float, float, int]:
        """Evaluation proper, under no_grad, restoring the mode it found."""
        was_training = self.model.training
        self.model.eval()
        self.model.tracking_mode = TrackingMode.EVAL
        age = self.model_age
        try:
            with torch.no_grad(), self.model.batched_trigger_counts(), \
                    BatchResults(self._eval_ds, self.device) as results:
                batches = self._full_eval_batches() if steps is None else (
                    self._next_eval_batch() for _ in self._progress(range(steps), f"eval {self.name}"))
                for inputs, labels, ids in batches:
                    output = self.model(inputs)
                    results.add(ids, self.criterion(output, labels), output, labels, age)
        finally:
            self.model.tracking_mode = TrackingMode.DISABLED
            self.model.train(was_training)
        return _means(results)

    def _check_steps(self, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ConfigurationError(f"the number of steps must be a positive integer, got {n!r}")
        return int(n)

    # ------------------------------------------------------------------ batches

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, labels, ids = batch
        nb = self.device.type == "cuda"
        return inputs.to(self.device, non_blocking=nb), labels.to(self.device, non_blocking=nb), ids

    def _next_train_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._train_iter is None:
            self._train_iter = iter(self.train_loader)
        try:
            batch = next(self._train_iter)
        except StopIteration:  # the epoch ended: the sampler draws the next permutation
            self._train_iter = iter(self.train_loader)
            batch = next(self._train_iter)
        self._last_train_id = int(batch[2][-1])
        return self._to_device(batch)

    def _next_eval_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._eval_iter is None:
            self._eval_iter = iter(self.eval_loader)
        try:
            batch = next(self._eval_iter)
        except StopIteration:
            self._eval_iter = iter(self.eval_loader)
            batch = next(self._eval_iter)
        return self._to_device(batch)

    def _full_eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        allowed = self._eval_ds.allowed_ids().tolist()
        loader = DataLoader(self._eval_ds, batch_size=self.eval_loader.batch_size, sampler=allowed,
                            num_workers=self.config.num_workers, generator=self._loader_generator,
                            collate_fn=collate)
        for batch in loader:
            yield self._to_device(batch)

    def _sync_train_position(self) -> None:
        """With workers, the loader reads ahead: put the sampler where training really is."""
        if self.config.num_workers and self._train_iter is not None:
            self._train_iter = None
            self._train_sampler.seek(self._train_sampler.position_after(self._last_train_id))

    def _reset_iterators(self) -> None:
        """After a deny/allow or a load the next batch must come from the sampler's new state."""
        if self._train_iter is not None and self.config.num_workers:
            self._sync_train_position()
        self._train_iter = None
        self._eval_iter = None

    def _train_start_state(self) -> dict[str, torch.Tensor]:
        """The sampler and RNG state at the start of a training call: what replay needs to re-run it."""
        out = {f"sampler/{k}": capture_mod.to_tensor(v) for k, v in self._train_sampler.state_arrays().items()}
        out.update({f"rng/{k}": v for k, v in capture_rng().items()})
        return out

    # ------------------------------------------------------------------ recording

    def _on_model_op(self, record: OperationRecord) -> None:
        self._recorder.on_operation(record)

    def _on_train_data_op(self, record: OperationRecord) -> None:
        self._reset_iterators()
        self._recorder.on_operation(record, split="train")

    def _on_eval_data_op(self, record: OperationRecord) -> None:
        self._reset_iterators()
        self._recorder.on_operation(record, split="eval")

    def _after_event(self, row: EventRow, summary: str) -> None:
        if self._recorder.detached:
            return
        if row.kind not in ("train", "eval"):
            tb = self._tensorboard()
            tb.marker(row.seq, summary, self.model_age)
            tb.widths(self._widths(), self.model_age)  # on disk within FLUSH_SECS, and at close()

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._flush_pending_history()  # the passes made so far happened: keep them for the next snapshot
        self._recorder.muted += 1
        try:
            capture_mod.restore(self, tensors, meta)
        finally:
            self._recorder.muted -= 1
        self._train_iter = None
        self._eval_iter = None

    def _flush_pending_history(self) -> None:
        """Move the ledgers' per-pass rows into the buffer the next snapshot writes."""
        for split, ds, _ in self._splits():
            h = ds.drain_history()
            if len(h.get("sample_id", [])):
                df = pd.DataFrame(h)
                df.insert(0, "split", split)
                self._history_chunks.append(df)

    def _write_snapshots(self, conn: Any, seq: int) -> None:
        # statistics unchanged since their last snapshot are not encoded again (SnapshotWriter)
        for table, (digest, build) in snapshot_sources(self).items():
            self._snapshot_writer.write(conn, self._experiment_id, table, seq, digest, build)
        self._flush_pending_history()
        if self._history_chunks:
            frame = pd.concat(self._history_chunks, ignore_index=True)
            self.store.write_snapshot(self._experiment_id, "sample_history", seq, frame, conn=conn)
            self._history_chunks = []

    # ------------------------------------------------------------------ TensorBoard

    @property
    def tensorboard_dir(self) -> Path:
        """Where this experiment's TensorBoard event files are written."""
        if self._tensorboard_dir is None:
            root = self.store.location.root or Path("store").resolve()
            self._tensorboard_dir = root / "tensorboard" / self.name
        return self._tensorboard_dir

    def _tensorboard(self) -> TensorBoardLog:
        if self._tb is None:
            self._tb = TensorBoardLog(self.tensorboard_dir)
        return self._tb

    def _log_scalars(self, split: str, loss: float, acc: float) -> None:
        if self._recorder.detached:
            return
        # No flush here: TensorBoard's writer thread flushes every few seconds (flush_secs), and a
        # flush per training call would make the training loop wait for a disk write.
        self._tensorboard().scalars(split, {"loss": loss, "accuracy": acc}, self.model_age)

    def _log_trigger_rates(self) -> None:
        if self._recorder.detached:
            return
        rates = {}
        for i, layer in enumerate(self.model.layers):
            for split in ("train", "eval"):
                rates[(i, split)] = layer.trigger_rates(split)
        self._tensorboard().trigger_rates(rates, self.model_age)

    # ------------------------------------------------------------------ public tools

    def display_stats(self) -> None:
        """Print the per-layer, per-neuron trigger report (dead and weak neurons flagged)."""
        print(self.model.stats_report())

    def dump(self) -> int:
        """Save a checkpoint; returns its id (0, 1, 2, … per experiment)."""
        return self.chkpt_manager.dump()

    def load(self, checkpoint_id: int) -> None:
        """Restore checkpoint ``checkpoint_id`` exactly; the next dump branches from it."""
        self.chkpt_manager.load(checkpoint_id)

    def snapshot(self) -> list[int]:
        """Write Parquet snapshots of sample_stats, neuron_stats and the sample history now."""
        self._recorder.wait()
        before = self._snapshot_ids()
        with self.store.transaction() as conn:
            self._write_snapshots(conn, self._recorder.last_seq)
        return [i for i in self._snapshot_ids() if i not in before]

    def _snapshot_ids(self) -> list[int]:
        df = self.store.query("SELECT snapshot_id FROM snapshots WHERE experiment_id = :e",
                              {"e": self._experiment_id})
        return df["snapshot_id"].tolist()

    def events(self) -> pd.DataFrame:
        """The event log as a DataFrame: seq, kind, summary, created_at, actor, payload, hashes."""
        from weightslab.events.summary import summarize

        rows = self.store.events(self._experiment_id)
        return pd.DataFrame([{
            "seq": e.seq, "kind": e.kind, "summary": summarize(e.kind, e.payload), "created_at": e.created_at,
            "actor": e.actor, "code_version": e.code_version, "payload": e.payload,
            "state_hash": e.state_hash, "hash": e.hash,
        } for e in rows])

    def sql(self, query: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query against the store; ``:experiment_id`` is bound to this experiment.

        Example:
            >>> exp.sql("SELECT sample_id, prediction_loss FROM sample_stats WHERE experiment_id = "
            ...         ":experiment_id ORDER BY prediction_loss DESC LIMIT 5")
        """
        self._recorder.wait()
        bound = {"experiment_id": self._experiment_id, **dict(params or {})}
        if not isinstance(query, str) or ":experiment_id" not in query:  # the store refuses a non-string
            bound.pop("experiment_id")
        return self.store.query(query, bound)

    def verify(self) -> bool:
        """True if this experiment's event hash chain verifies."""
        self._recorder.wait()
        return self.store.verify_chain(self._experiment_id).ok

    def close(self) -> None:
        """Write pending statistics, flush TensorBoard. The experiment stays usable."""
        self._recorder.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __repr__(self) -> str:
        return (f"Experiment(name={self.name!r}, store={self.store.describe()!r}, age={self.model_age}, "
                f"events={self._recorder.last_seq})")

