"""Building an experiment's runtime from the constructor's arguments, each checked first.

Nothing is written and no global state changes here: a refused argument raises
:class:`~weightslab.errors.ConfigurationError` before the store is touched.
"""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

import torch

from weightslab import __version__
from weightslab.errors import ConfigurationError
from weightslab.experiment.config import ExperimentConfig
from weightslab.experiment.criterion import Criterion
from weightslab.experiment.loaders import Batches
from weightslab.experiment.runtime import Runtime, Split
from weightslab.experiment.training import Step, make_scheduler
from weightslab.history.store import Store
from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.surgery import NetworkWithOps
from weightslab.surgery.convert import conversion_version, use_conversion

__all__ = ["adopt_conversion", "build_runtime", "check_arguments", "check_device", "code_version",
           "conversion_record", "derived_seed"]


def code_version() -> str:
    """weightslab version, plus the git revision of the user's working tree when there is one."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=2, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"weightslab {__version__}" + (f" git {rev}" if rev else "")


def derived_seed(seed: int, seq: int) -> int:
    """The seed of the random draws of the event ``seq`` of an experiment seeded ``seed`` (when the caller
    passes none): the same script gives the same history."""
    digest = hashlib.sha256(f"weightslab.seed/{seed}/{seq}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


def check_device(device: Any) -> torch.device:
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


def check_arguments(model: Any, optimizer_class: Any, train_dataset: Any, eval_dataset: Any, name: Any,
                     recipe: Any) -> None:
    if not isinstance(model, NetworkWithOps):
        raise ConfigurationError(
            f"model must be a weightslab.NetworkWithOps, got {type(model).__name__}. Build it from the "
            "*WithNeuronOps layers, or convert an existing model: model = weightslab.convert_to_ops(model)"
        )
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ConfigurationError(
            f"optimizer_class must be a torch.optim.Optimizer subclass such as optim.Adam, got {optimizer_class!r}"
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


def conversion_record(model: NetworkWithOps) -> dict[str, int]:
    """What the create config records of how ``convert_to_ops`` converted the model: ``{"conversion": version}``,
    or nothing for a model it did not convert."""
    version = conversion_version(model)
    return {} if version is None else {"conversion": version}


def adopt_conversion(model: Any, store: Store, name: str) -> None:
    """Convert the model of a recorded experiment back to the conversion it was recorded with.

    A later WeightsLab's ``convert_to_ops`` converts more (Linear subclasses, then attention), which
    shifts ``model.layers`` indices and checkpoint keys. A store that records no version predates
    versions: of versions 1 and 2, the one whose layer widths are those of the initial state recorded.
    """
    row = store.find_experiment(name)
    if row is None or not isinstance(model, NetworkWithOps) or conversion_version(model) is None \
            or store.last_seq(row.experiment_id) == 0:
        return
    recorded = (row.config.get("config") or {}).get("conversion")
    if isinstance(recorded, int):
        use_conversion(model, min(recorded, conversion_version(model) or recorded))
        return
    events = store.events(row.experiment_id, 1, 1)
    initial = events[0].payload.get("initial") if events else None
    if not isinstance(initial, str):
        return
    widths = list(store.read_manifest(initial).meta.get("architecture", []))
    for version in (2, 1):
        use_conversion(model, min(version, conversion_version(model) or version))
        if [int(layer.neuron_count) for layer in model.layers] == widths:
            return


def build_runtime(name: str, model: NetworkWithOps, optimizer_class: type[torch.optim.Optimizer], train_dataset: Any,
                  eval_dataset: Any, device: torch.device, config: ExperimentConfig, criterion: Criterion,
                  store: Store, step: Step) -> Runtime:
    """The live objects: the model on its device, its optimizer (and scheduler, grad scaler), both splits and
    their loaders."""
    if config.amp is not None and not torch.amp.is_autocast_available(device.type):
        raise ConfigurationError(f"amp={config.amp!r} needs autocast, which torch does not offer on {device.type}; "
                                 "train without amp there")
    model = model.to(device)
    try:
        optimizer = optimizer_class(model.parameters(), lr=config.learning_rate, **config.optimizer_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"{optimizer_class.__name__}(...) refused its arguments: {e}") from e
    model.attach_optimizer(optimizer)
    train_ds, eval_ds = LedgeredDataset(train_dataset, "train"), LedgeredDataset(eval_dataset, "eval")
    train = Split("train", train_ds, LedgerSampler(train_ds, seed=config.seed, shuffle=True))
    evals = Split("eval", eval_ds, LedgerSampler(eval_ds, seed=config.seed, shuffle=False))
    batches = Batches((train.ledger, train.sampler), (evals.ledger, evals.sampler), batch_size=config.batch_size,
                      eval_batch_size=config.eval_batch_size or config.batch_size, num_workers=config.num_workers,
                      seed=config.seed, device=device)
    scheduler = make_scheduler(config.scheduler, optimizer)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    # torch.compile re-traces by itself when an edit changes a parameter's shape (its guards see it)
    forward = torch.compile(model, **config.compile) if config.compile is not None else model
    return Runtime(name, model, optimizer, device, config, criterion, train, evals, batches, store, step=step,
                   scheduler=scheduler, scaler=scaler, forward=forward)
