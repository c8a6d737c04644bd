"""What each rank of the distributed tests runs: ``python tests/distributed/ranks.py SCENARIO STORE NAME OUT``.

Run under a process group (``weightslab.experiment.distributed.launch`` sets torchrun's environment), or
alone: then it is the single-process run the distributed one is compared with (``--batch`` is then the
global batch). Each rank writes what it saw to ``OUT.<rank>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import optim  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from weightslab import DistributedError, Experiment  # noqa: E402
from weightslab.demo import MNISTModel  # noqa: E402
from weightslab.experiment.distributed import initialise_from_environment  # noqa: E402


def recipe() -> tuple[Any, Any, Any]:
    """The model and data of these tests (recorded, so ``weightslab replay`` rebuilds them)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(720, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) * 40).long().clamp(-4, 5) + 4  # labels the model can learn
    torch.manual_seed(0)
    return MNISTModel(), TensorDataset(x[:600], y[:600]), TensorDataset(x[600:], y[600:])


def experiment(store: str, name: str, batch: int, **extra: Any) -> Experiment:
    model, train, evals = recipe()
    return Experiment(model=model, optimizer_class=optim.Adam, train_dataset=train, eval_dataset=evals,
                      learning_rate=1e-2, batch_size=batch, name=name, store=store, progress=False,
                      recipe="ranks:recipe", **extra)


def tutorial(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Every kind of operation, SPMD; then closed and reopened."""
    exp.train_n_steps_with_eval_full(12)
    exp.model.prune(layer_index=1, neuron_indices={0})
    exp.model.add_neurons(layer_index=0, neuron_count=2)
    exp.model.reinit_neurons(layer_index=0, neuron_indices={1}, perturbation_ratio=0.2)
    exp.model.layers[0].set_per_neuron_learning_rate({0}, lr=0.0)
    exp.model.freeze_layers_up_to_idx(0)
    exp.train_n_steps(3)
    exp.model.unfreeze_layers_from_idx(0)
    ds = exp.train_loader.dataset
    ds.deny_samples_with_predicate(lambda id, age, loss, times, denied, pred, label: label == 3)  # noqa: A002
    ds.deny_samples_and_sample_allowed_with_predicate(
        lambda id, age, loss, times, denied, pred, label: label == 5, allow_to_denied_factor=1)  # noqa: A002
    exp.train_n_steps(len(exp.train_loader) + 2)  # past an epoch's end: a short last batch
    first = exp.dump()
    ds.allowlist_samples(None)
    exp.set_hyperparameters(learning_rate=5e-3)
    exp.train_n_steps(4)
    exp.eval_n_steps(2)
    exp.dump()
    exp.load(first)
    exp.train_n_steps(2)
    exp.eval_full()
    exp.close()
    out = {"last_seq": exp.last_seq}
    if args.reopen:
        again = experiment(args.store, args.name, args.batch)
        out["resumed"] = str(again.resume_report)
        again.train_n_steps(2)
        again.close()
        exp = again
        out["last_seq"] = exp.last_seq
    out["state"] = _state(exp)
    out["events"] = exp.events()["kind"].tolist() if _rank() == 0 else None
    return out


def three(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Ranks that make different calls (each gets the error, nothing is recorded), then every kind of edit."""
    out = mismatch(exp, args)
    exp.model.prune(layer_index=2, neuron_indices={1, 2})
    exp.model.add_neurons(layer_index=1, neuron_count=3)
    exp.model.reinit_neurons(layer_index=1, neuron_indices={0})
    exp.train_loader.dataset.denylist_samples(range(0, 600, 7))
    exp.train_n_steps(len(exp.train_loader) + 1)
    first = exp.dump()
    exp.train_loader.dataset.allowlist_samples({7, 14})
    exp.train_n_steps(2)
    exp.load(first)
    exp.eval_full()
    exp.close()
    out["state"] = _state(exp)
    out["last_seq"] = exp.last_seq
    return out


def resume(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Reopen (the constructor did) and go on."""
    exp.train_n_steps(2)
    exp.close()
    return {"resumed": str(exp.resume_report), "last_seq": exp.last_seq}


def mismatch(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Ranks that make different calls: each gets the error, nothing is recorded."""
    exp.train_n_steps(2)
    out: dict[str, Any] = {"before": exp.last_seq}
    try:  # another neuron on rank 1
        exp.model.prune(layer_index=1, neuron_indices={_rank()})
    except DistributedError as e:
        out["prune"] = str(e)
    try:  # another call on rank 1
        if _rank() == 0:
            exp.train_n_steps(1)
        else:
            exp.model.add_neurons(layer_index=0, neuron_count=1)
    except DistributedError as e:
        out["call"] = str(e)
    out["widths"] = [int(layer.neuron_count) for layer in exp.model.layers]
    exp.train_n_steps(1)  # the ranks go on together
    exp.flush()
    out["after"] = exp.last_seq
    out["events"] = len(exp.events()) if _rank() == 0 else None
    return out


def kill(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Rank 1 dies (SIGKILL) in the middle of a training call."""
    exp.train_n_steps(4)
    exp.dump()
    exp.train_n_steps(2)
    Path(f"{args.out}.{_rank()}.refused.json").write_text(json.dumps(refused(exp)))
    calls = [0]
    criterion = exp.criterion

    def dying(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if _rank() == 1 and calls[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return criterion(output, labels)

    exp.criterion = dying
    exp.train_n_steps(6)
    return {"survived": True}


def refused(exp: Experiment) -> dict[str, Any]:
    """Rank 0's database refuses every event for a while (a real trigger): every rank gets an error, the
    refused edit is rolled back and the refused training undone on every rank; then they go on."""
    from sqlalchemy import text

    from weightslab.errors import WeightsLabError

    out: dict[str, Any] = {"before": exp.last_seq, "widths": [int(layer.neuron_count) for layer in exp.model.layers]}
    if _rank() == 0:
        with exp.store.engine.begin() as conn:
            conn.execute(text("CREATE TRIGGER wl_refuse BEFORE INSERT ON events "
                              "BEGIN SELECT RAISE(ABORT, 'injected: the disk refused the event'); END"))
    for what, call in (("prune", lambda: exp.model.prune(layer_index=2, neuron_indices={0})),
                       ("train", lambda: exp.train_n_steps(2))):
        try:
            call()
        except WeightsLabError as e:
            out[what] = f"{type(e).__name__}: {e}"
    if _rank() == 0:
        with exp.store.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER wl_refuse"))
    out["after"] = exp.last_seq
    out["widths_after"] = [int(layer.neuron_count) for layer in exp.model.layers]
    out["state"] = _state(exp)
    return out


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _state(exp: Experiment) -> dict[str, list[float]]:
    tensors, _ = exp.capture()
    return {k: v.detach().double().reshape(-1).tolist() for k, v in tensors.items()
            if k.startswith(("model/", "optim/")) and v.is_floating_point()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["tutorial", "three", "mismatch", "kill", "resume"])
    ap.add_argument("store")
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reopen", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    initialise_from_environment("cpu", timeout_s=60)
    exp = experiment(args.store, args.name, args.batch)
    result = globals()[args.scenario](exp, args)
    Path(f"{args.out}.{_rank()}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
