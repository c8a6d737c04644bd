"""The tutorial, end to end, on scikit-learn's digits (or MNIST from a local folder).

Run it with ``make demo`` or ``python -m weightslab.demo [--store DIR] [--mnist DIR]``; on several
processes with ``torchrun --nproc-per-node 2 -m weightslab.demo`` (DDP over gloo on CPU: every rank runs
this script, rank 0 records and prints; the global batch is the batch size times the number of ranks).
It trains the tutorial's ``MNISTModel``, looks at its statistics, edits the
model and the data, checkpoints and branches, and shows the lineage, a SQL
query and where the TensorBoard logs are — saying what it does as it goes.
"""

from __future__ import annotations

import time

_LOADING = time.perf_counter()  # before torch: the demo's own wall time includes importing it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch as th  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.utils.data import Dataset, TensorDataset  # noqa: E402

from weightslab import (  # noqa: E402
    Conv2dWithNeuronOps,
    Experiment,
    LinearWithNeuronOps,
    NetworkWithOps,
    TrackingMode,
)

__all__ = ["MNISTModel", "digits_arrays", "digits_datasets", "main", "mnist_datasets", "recipe"]


class MNISTModel(NetworkWithOps):
    """The tutorial's model, verbatim."""

    def __init__(self):
        super(MNISTModel, self).__init__()  # noqa: UP008 - the tutorial's spelling
        self.tracking_mode = TrackingMode.DISABLED
        self.layer0 = Conv2dWithNeuronOps(
            in_channels=1, out_channels=2, kernel_size=3)
        self.mpool0 = nn.MaxPool2d(2)
        self.layer1 = Conv2dWithNeuronOps(
            in_channels=2, out_channels=4, kernel_size=3)
        self.mpool1 = nn.MaxPool2d(2)
        self.layer2 = Conv2dWithNeuronOps(
            in_channels=4, out_channels=10, kernel_size=3)
        self.mpool2 = nn.MaxPool2d(2)
        self.out = LinearWithNeuronOps(in_features=10, out_features=10)
        self.layers = [self.layer0, self.layer1, self.layer2, self.out]

    def forward(self, input: th.Tensor):
        self.maybe_update_age(input)

        x = self.layer0(input)
        x = F.relu(x)
        x = self.mpool0(x)

        x = self.layer1(x)
        x = F.relu(x)
        x = self.mpool1(x)

        x = self.layer2(x)
        x = F.relu(x)
        x = self.mpool2(x)

        x = x.view(x.size(0), -1)
        output = self.out(x, skip_register=True)

        output = F.log_softmax(output, dim=1)
        return output


def digits_datasets(eval_fraction: float = 1 / 6) -> tuple[Dataset, Dataset]:
    """scikit-learn's 1,797 8×8 digits, upsampled to 28×28 like MNIST; a fixed train/eval split."""
    images, target = digits_arrays()
    x = th.tensor(images, dtype=th.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - 0.1307) / 0.3081
    y = th.tensor(target, dtype=th.int64)
    order = th.randperm(len(y), generator=th.Generator().manual_seed(1234))
    n_eval = int(len(y) * eval_fraction)
    ev, tr = order[:n_eval], order[n_eval:]
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[ev], y[ev])


def digits_arrays() -> tuple[Any, Any]:
    """The images (1797×8×8, float64) and targets of ``sklearn.datasets.load_digits()``.

    Read from the file scikit-learn ships, as ``load_digits`` reads it, without importing scikit-learn
    (a second of the demo's start-up, and of every replay of a demo run). Falls back to ``load_digits``
    where that file is not found (another layout).
    """
    import gzip
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ImportError("the demo's digits come with scikit-learn: pip install 'weightslab[demo]'")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def mnist_datasets(root: str) -> tuple[Dataset, Dataset]:
    """Real MNIST from a local folder (torchvision layout; nothing is downloaded)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return (datasets.MNIST(root, train=True, download=False, transform=tf),
            datasets.MNIST(root, train=False, download=False, transform=tf))


def recipe() -> tuple[nn.Module, Dataset, Dataset]:
    """How replay tools rebuild this demo's model and data (recorded as ``weightslab.demo:recipe``)."""
    train_ds, eval_ds = digits_datasets()
    return MNISTModel(), train_ds, eval_ds


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="store directory or URL (default: $WEIGHTSLAB_STORE or ./store)")
    ap.add_argument("--mnist", default=None, help="train on MNIST from this local folder instead of digits")
    ap.add_argument("--name", default=None, help="experiment name (default: a new name each run)")
    ap.add_argument("--device", default=None, help="where to train (default: cuda when available, else cpu)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the first training (default 3)")
    ap.add_argument("--distributed", action="store_true",
                    help="run on the ranks of torch.distributed (implied under torchrun: WORLD_SIZE > 1)")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if th.cuda.is_available() else "cpu")
    rank = _join_process_group(device, required=args.distributed)
    if rank > 0:  # every rank runs the tutorial; rank 0 says what happens
        with contextlib.redirect_stdout(io.StringIO()):
            _tutorial(args, device)
    else:
        _tutorial(args, device)


def _join_process_group(device: str, required: bool) -> int:
    """This process's rank under torchrun (0 without it); ``required``: refuse to run without it."""
    import torch.distributed as dist

    from weightslab.experiment.distributed import initialise_from_environment

    if not initialise_from_environment(device):
        if required:
            raise SystemExit("--distributed runs under torchrun: torchrun --nproc-per-node 2 -m weightslab.demo")
        return 0
    if device == "cuda":
        th.cuda.set_device(dist.get_rank() % th.cuda.device_count())
    return dist.get_rank()


def _tutorial(args: argparse.Namespace, device: str) -> None:
    import torch.distributed as dist

    started = time.perf_counter()
    world = dist.get_world_size() if dist.is_initialized() else 1

    if args.mnist:
        train_ds, eval_ds = mnist_datasets(args.mnist)
        rec, batch = None, 256
    else:
        train_ds, eval_ds = digits_datasets()
        rec, batch = "weightslab.demo:recipe", 64
    name = args.name or time.strftime("digits-demo-%Y%m%d-%H%M%S")
    if world > 1:  # every rank must use rank 0's name (the clocks may straddle a second)
        box = [name]
        dist.broadcast_object_list(box, src=0)
        name = box[0]
        device = f"cuda:{th.cuda.current_device()}" if device == "cuda" else device
        batch //= world  # the same global batch as one process

    say(f"Creating experiment {name!r}: the tutorial's MNISTModel, Adam, lr 1e-2, batch {batch}"
        + (f" on each of {world} ranks (global batch {batch * world})" if world > 1 else "") + f", on {device}")
    th.manual_seed(0)
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                     eval_dataset=eval_ds, device=device, learning_rate=1e-2, batch_size=batch, name=name,
                     store=args.store, recipe=rec)
    print(f"    store: {exp.store.describe()}; {len(train_ds)} training and {len(eval_ds)} eval samples")

    say(f"Training {args.epochs} epochs with a full evaluation every quarter epoch")
    loss, acc = exp.train_n_steps_with_eval_full(args.epochs * len(exp.train_loader))
    print(f"    eval loss {loss:.4f}, accuracy {acc:.1%}, model age {exp.model_age:,} samples")

    say("Neuron statistics (trigger rate = share of samples whose mean pre-activation is > 0)")
    exp.display_stats()

    say("Per-sample statistics (exp.train_loader.dataset.get_dataframe())")
    print(exp.train_loader.dataset.get_dataframe().sort_values("prediction_loss").tail(5))

    cp0 = exp.dump()
    say(f"Saved checkpoint {cp0}")

    rates = exp.model.layers[1].trigger_rates("train")
    weakest = int(rates.argmin())
    say(f"Pruning neuron {weakest} of layer 1 (the weakest: train trigger rate {float(rates[weakest]):.3f})")
    exp.model.prune(layer_index=1, neuron_indices={weakest})

    say("Adding 4 neurons to layer 0 (function-preserving: the output does not change)")
    exp.model.add_neurons(layer_index=0, neuron_count=4)
    say("Re-initialising neurons 4 and 5 of layer 0 with a 20% perturbation")
    exp.model.reinit_neurons(layer_index=0, neuron_indices={4, 5}, perturbation_ratio=0.2)
    say("Freezing neurons 0-1 of layer 0 (per-neuron learning rate 0.0)")
    exp.model.layers[0].set_per_neuron_learning_rate(set(range(0, 2)), lr=0.0)

    say("Freezing layers 0..1, training 10 steps, unfreezing every layer")
    exp.model.freeze_layers_up_to_idx(1)
    exp.train_n_steps(10)
    exp.model.unfreeze_layers_from_idx(0)

    denylist_fn = lambda id, age, loss, times, denied, pred, label: loss <= 0.05  # noqa: E731, A002
    denied = exp.train_loader.dataset.deny_samples_with_predicate(denylist_fn)
    say(f"Denied {denied} well-learned training samples (loss ≤ 0.05); {len(exp.train_loader)} batches "
        "per epoch remain")
    exp.train_n_steps_with_eval_full(len(exp.train_loader))
    cp1 = exp.dump()
    say(f"Saved checkpoint {cp1}")

    say(f"Loading checkpoint {cp0} (before the edits), training a different branch")
    exp.load(checkpoint_id=cp0)
    exp.train_loader.dataset.allowlist_samples(None)
    exp.model.add_neurons(layer_index=2, neuron_count=2)
    loss, acc = exp.train_n_steps_with_eval_full(len(exp.train_loader))
    cp2 = exp.dump()
    print(f"    branch result: eval loss {loss:.4f}, accuracy {acc:.1%} (checkpoint {cp2})")

    say("Lineage: print(exp.chkpt_manager)")
    print(exp.chkpt_manager)

    say("SQL over the recorded statistics: the 5 hardest training samples")
    print(exp.sql("SELECT sample_id, label, prediction, prediction_loss, exposure_amount FROM sample_stats "
                  "WHERE experiment_id = :experiment_id AND split = 'train' "
                  "ORDER BY prediction_loss DESC LIMIT 5").to_string(index=False))

    events = exp.events()
    say(f"The event log has {len(events)} events; hash chain verifies: {exp.verify()}")
    print(events[["seq", "kind", "summary"]].tail(8).to_string(index=False))

    say(f"TensorBoard logs: tensorboard --logdir {exp.tensorboard_dir}")
    print(f"    replay or audit it later: weightslab audit {name}; weightslab lineage {name}")
    exp.close()
    now = time.perf_counter()
    print(f"\nDone in {now - _LOADING:.1f} s ({started - _LOADING:.1f} s of it importing torch and weightslab).")


if __name__ == "__main__":
    main()
