"""The runtime: the live objects of one experiment, held in one explicit place.

The Experiment's helpers (recorder, checkpoints, replay, statistics, TensorBoard)
get this object instead of the Experiment: the model, its optimizer, the two
splits (ledger + sampler each), the loaders, the store and the experiment's id,
and the operations on them that several helpers need: the state as named tensors
(:meth:`Runtime.capture` / :meth:`Runtime.restore`), its fingerprint, the layer
widths and the neuron counters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightslab.experiment import capture as capture_mod
from weightslab.experiment.config import ExperimentConfig
from weightslab.experiment.criterion import Criterion, check_criterion
from weightslab.experiment.loaders import Batches
from weightslab.experiment.state import fast_digests, tensor_hashes
from weightslab.experiment.training import Step, default_step
from weightslab.history.manifest import state_digest
from weightslab.history.store import Store
from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.surgery import NetworkWithOps, TrackingMode

__all__ = ["Fingerprint", "NeuronCounters", "Runtime", "Split"]

#: (layer index, layer name, split, trigger counts, seen counts) of one layer and split.
NeuronCounters = tuple[int, str, str, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Split:
    """One data split: its name, its ledger (the dataset wrapper) and its sampler."""

    name: str
    ledger: LedgeredDataset
    sampler: LedgerSampler


@dataclass(frozen=True)
class Fingerprint:
    """The fingerprint of a whole state: one hash, and one per state group (to say what differs)."""

    digest: str
    groups: dict[str, str]

    @classmethod
    def of_state(cls, hashes: dict[str, str], meta: dict[str, Any] | None) -> Fingerprint:
        """Of tensors given by their hashes and the JSON part (see :func:`~weightslab.history.manifest.state_digest`)."""
        return cls(*state_digest(hashes, meta))


@dataclass
class Runtime:
    """What an experiment's helpers work on (see the module docstring)."""

    name: str
    model: NetworkWithOps
    optimizer: torch.optim.Optimizer
    device: torch.device
    config: ExperimentConfig
    criterion: Criterion
    train: Split
    eval: Split
    batches: Batches
    store: Store
    step: Step = default_step
    scheduler: Any = None  # a torch.optim.lr_scheduler.LRScheduler, stepped per config.scheduler["interval"]
    scaler: Any = None  # torch.amp.GradScaler of fp16 training
    forward: Any = None  # what the loops call: torch.compile(model) when compiled, else the model itself
    experiment_id: int = 0  # set once the experiment is created or found in the store
    group: Any = None  # under torch.distributed: this rank's Group (experiment/distributed.py); None in one process
    #: 2: fast tensor digests, and the JSON part of the state too (hyper-parameters, scheduler, scaler);
    #: 1: blob hashes of the tensors only (experiments created before; see history/manifest.state_digest)
    fingerprint_version: int = 2

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model

    @property
    def splits(self) -> tuple[Split, Split]:
        return (self.train, self.eval)

    def split(self, name: str) -> Split:
        return self.train if name == "train" else self.eval

    @property
    def model_age(self) -> int:
        return self.model.age

    def widths(self) -> list[int]:
        """Neurons per layer of ``model.layers``."""
        return [int(layer.neuron_count) for layer in self.model.layers]

    # -- state -------------------------------------------------------------------------------------
    def capture(self, *, rng: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Every state tensor (live references) and the JSON part; see :mod:`~weightslab.experiment.capture`."""
        return capture_mod.capture(self, rng=rng)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Put the runtime into a captured state, all or nothing; the next batches follow it."""
        capture_mod.restore(self, tensors, meta)
        self.batches.drop()

    def set_batch_size(self, batch_size: int) -> None:
        """Train on batches of ``batch_size`` from the next call on (the epoch goes on where it is)."""
        self.config = dataclasses.replace(self.config, batch_size=batch_size)
        self.batches.set_train_batch_size(batch_size)

    def fingerprint(self) -> Fingerprint:
        """The fingerprint of the live state: version 2, the tensors' fast digests (computed where they live)
        and the JSON part; version 1, the tensors' blob hashes (see history/manifest.state_digest)."""
        tensors, meta = self.capture()
        return Fingerprint.of_state(self.tensor_digests(tensors), meta)

    def tensor_digests(self, tensors: dict[str, torch.Tensor],
                       views: Mapping[str, memoryview] | None = None) -> dict[str, str]:
        """Each tensor's digest as this experiment's fingerprint version defines it (``views``: the value bytes
        of some CPU tensors, already at hand)."""
        return fast_digests(tensors, views) if self.fingerprint_version >= 2 else tensor_hashes(tensors)

    def probe_criterion(self) -> None:
        """Run two samples of each split through model and criterion (nothing is recorded or changed).

        The samples are read by index and collated here: a DataLoader iterator would draw its seed
        from torch's global generator, so a refused constructor would change the caller's RNG.

        Raises:
            ConfigurationError: the criterion does not give one finite loss per sample.
        """
        from torch.utils.data import default_collate

        was_training, mode = self.model.training, self.model.tracking_mode
        self.model.eval()
        self.model.tracking_mode = TrackingMode.DISABLED
        try:
            for split in self.splits:
                ds = split.ledger
                x, y, _ = default_collate([ds[i] for i in range(min(2, len(ds)))])
                with torch.no_grad(), self._autocast():
                    out = self.model(x.to(self.device))
                    check_criterion(self.criterion, out, y.to(self.device))
        finally:
            self.model.train(was_training)
            self.model.tracking_mode = mode

    def _autocast(self) -> Any:
        if self.config.amp is None:
            import contextlib

            return contextlib.nullcontext()
        from weightslab.experiment.training import AMP_DTYPES

        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.config.amp])

    # -- neuron statistics ----------------------------------------------------------------------------
    def neuron_counters(self) -> list[NeuronCounters]:
        """(layer index, layer name, split, trigger counts, seen counts) per layer and split."""
        names = {id(m): n for n, m in self.model.named_modules()}
        out = []
        for li, layer in enumerate(self.model.layers):
            lname = names.get(id(layer), f"layer{li}")
            for split in ("train", "eval"):
                out.append((li, lname, split, getattr(layer, f"{split}_trigger_count").cpu().numpy(),
                            getattr(layer, f"{split}_seen_count").cpu().numpy()))
        return out

    def neuron_frame(self, counters: list[NeuronCounters] | None = None) -> pd.DataFrame:
        """Neuron counters (default: the current ones) as the rows of ``neuron_stats`` (for snapshots)."""
        counters = self.neuron_counters() if counters is None else counters
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
