"""The GPU check: WeightsLab end to end on one device, in at most ~5 minutes, with a table of what it did.

    python tools/gpu_check.py                      # on CUDA (the default when there is one)
    python tools/gpu_check.py --device cpu --tiny  # the same code paths in seconds (tests run this)

Rows:
  tutorial        the demo (weightslab.demo: train, edit, deny, dump, load, branch, SQL) on the device
  resnet18 ...    a converted torchvision ResNet-18 on the device: train, then every edit kind (prune, add,
                  reinit, per-neuron and per-incoming learning rates, freeze/unfreeze, deny/allow, learning
                  rate), eval, dump, load, close; then a replica replays the whole log from the start on the
                  device and verifies every recorded fingerprint
  overhead ...    the benchmark rows on the device: a plain PyTorch loop vs the Experiment, same model, data
                  and batch, alternated (ABBA), absolute medians and their ratio (tutorial model: ≤ 1.10,
                  ResNet-18: ≤ 1.05)

Exits 1 when a check fails (a target missed is reported, not failed: the device's load varies).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import optim
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import PlainMNISTModel, synthetic  # noqa: E402

from weightslab import Experiment, convert_to_ops  # noqa: E402
from weightslab.demo import MNISTModel  # noqa: E402
from weightslab.demo import main as demo  # noqa: E402
from weightslab.experiment.replica import replay_to, replica  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []  # (check, seconds, result, note)
FAILED: list[str] = []


def row(check: str, seconds: float | None, result: str, note: str = "") -> None:
    ROWS.append((check, "-" if seconds is None else f"{seconds:.2f}", result, note))
    print(f"  {check:<30} {ROWS[-1][1]:>8}  {result:<10} {note}", flush=True)


def step(check: str, fn: Callable[[], str | None], note: str = "") -> Any:
    """Run one check, timed; a failure is a row (and the exit code), not the end of the run."""
    sync()
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table
        traceback.print_exc()
        FAILED.append(check)
        row(check, time.perf_counter() - t, "FAILED", f"{type(e).__name__}: {e}"[:160])
        return None
    sync()
    row(check, time.perf_counter() - t, "ok", out or note)
    return out


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# -- the tutorial ------------------------------------------------------------------------------------------

def tutorial(args: argparse.Namespace, store: str) -> str:
    demo(["--store", store, "--name", "gpu-check-demo", "--device", args.device, "--epochs", str(args.epochs)])
    return f"{args.epochs} epochs, edits, 3 checkpoints"


# -- ResNet-18, every edit kind ------------------------------------------------------------------------

def resnet() -> Any:
    import torchvision

    torch.manual_seed(0)
    return convert_to_ops(torchvision.models.resnet18(num_classes=10))


def resnet_data(args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    n, size = args.resnet_samples, args.resnet_size
    return (TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)),
            TensorDataset(torch.randn(n // 4, 3, size, size, generator=g), torch.randint(0, 10, (n // 4,), generator=g)))


def resnet_edits(args: argparse.Namespace, store: str) -> Experiment:
    train, evals = resnet_data(args)
    exp = Experiment(model=resnet(), optimizer_class=optim.Adam, train_dataset=train, eval_dataset=evals,
                     device=args.device, learning_rate=1e-3, batch_size=args.resnet_batch, name="gpu-check-resnet",
                     store=store, progress=False, criterion=torch.nn.CrossEntropyLoss(reduction="none"))
    step("resnet18 train", lambda: _train(exp, 2))
    model = exp.model
    step("resnet18 prune", call(model.prune, layer_index=1, neuron_indices={0, 1}))
    step("resnet18 add neurons", call(model.add_neurons, layer_index=2, neuron_count=4))
    step("resnet18 reinit", call(model.reinit_neurons, layer_index=3, neuron_indices={0, 1}, perturbation_ratio=0.2))
    step("resnet18 per-neuron lr", call(model.layers[4].set_per_neuron_learning_rate, {0, 1}, lr=0.0))
    conv = next(i for i, layer in enumerate(model.layers) if i > 4 and isinstance(layer, torch.nn.Conv2d))
    step("resnet18 per-incoming lr",
         call(model.layers[conv].set_per_incoming_neuron_learning_rate, {0}, lr=0.5), f"layer {conv}")
    step("resnet18 freeze", call(model.freeze_layers_up_to_idx, 2))
    step("resnet18 train frozen", lambda: _train(exp, 1))
    step("resnet18 unfreeze", call(model.unfreeze_layers_from_idx, 0))
    ds: Any = exp.train_loader.dataset  # the LedgeredDataset
    step("resnet18 deny", lambda: f"{ds.deny_samples_with_predicate(lambda *a: a[0] % 3 == 0)} denied")
    step("resnet18 train", lambda: _train(exp, 2))
    first = step("resnet18 dump", lambda: f"checkpoint {exp.dump()}")
    step("resnet18 allow", lambda: f"{ds.allowlist_samples(None)} allowed")
    step("resnet18 learning rate", call(exp.set_hyperparameters, learning_rate=5e-4))
    step("resnet18 train", lambda: _train(exp, 2))
    step("resnet18 eval", lambda: f"accuracy {exp.eval_full()[1]:.2f}")
    step("resnet18 dump", lambda: f"checkpoint {exp.dump()}, {exp.chkpt_manager.last_dump_bytes / 1e6:.1f} MB new")
    if first is not None:
        step("resnet18 load", call(exp.load, int(first.split()[-1])))
        step("resnet18 train after load", lambda: _train(exp, 1))
    step("resnet18 close", call(exp.close), f"{exp.last_seq} events")
    return exp


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], None]:
    """``fn(*args, **kwargs)`` as a check (an edit returns nothing to report)."""
    def run() -> None:
        fn(*args, **kwargs)
    return run


def _train(exp: Experiment, n: int) -> str:
    loss, _ = exp.train_n_steps(n)
    return f"loss {loss:.3f}"


def resnet_replay(args: argparse.Namespace, exp: Experiment) -> str:
    train, evals = resnet_data(args)
    rep = replica(exp.store, exp.name, model=resnet(), train_dataset=train, eval_dataset=evals, device=args.device)
    rep.criterion = torch.nn.CrossEntropyLoss(reduction="none")  # the one it trained with (not recorded)
    outcome = replay_to(rep, from_start=True)
    rep.close()
    if not outcome.ok:
        raise AssertionError(f"replay stopped: {outcome.divergence or outcome.error}")
    return f"{len(outcome.replayed)} events re-executed, every fingerprint matches"


# -- overhead on the device -------------------------------------------------------------------------------

def plain_loop(model: torch.nn.Module, ds: TensorDataset, batch: int, steps: int, device: str,
               log_probs: bool) -> float:
    model = model.to(device)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    sync()
    t = time.perf_counter()
    done = 0
    while done < steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            (F.nll_loss(out, y) if log_probs else F.cross_entropy(out, y)).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    sync()
    return time.perf_counter() - t


def experiment_loop(make: Callable[[], Any], ds: TensorDataset, ev: TensorDataset, batch: int, steps: int,
                    device: str, store: str, criterion: Any) -> float:
    exp = Experiment(model=make(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=ev, device=device,
                     learning_rate=1e-3, batch_size=batch, name=f"o-{uuid.uuid4().hex[:8]}", store=store,
                     progress=False, criterion=criterion)
    sync()
    t = time.perf_counter()
    exp.train_n_steps(steps)
    exp.close()
    sync()
    elapsed = time.perf_counter() - t
    exp.store.close()
    return elapsed


def overhead(label: str, reps: int, base: Callable[[], float], subject: Callable[[], float], limit: float,
             note: str) -> None:
    if reps > 1:
        base(), subject()  # warm-up (kernels, allocator, imports)
    b, s = [], []
    for i in range(reps):
        pair = (base, subject) if i % 2 == 0 else (subject, base)
        got = [fn() for fn in pair]
        b.append(got[0] if i % 2 == 0 else got[1])
        s.append(got[1] if i % 2 == 0 else got[0])
    ratio = statistics.median(x / y for x, y in zip(s, b))
    mb, ms = statistics.median(b), statistics.median(s)
    ROWS.append((label, f"{ms:.2f}", f"{ratio:.3f}", f"plain {mb:.2f} s; target ≤ {limit:g} "
                 f"{'met' if ratio <= limit else 'MISSED'}; {note}"))
    print(f"  {label:<30} {ms:>8.2f}  {ratio:<10.3f} {ROWS[-1][3]}", flush=True)


def overheads(args: argparse.Namespace, store: str) -> None:
    n, dev = args.tutorial_samples, args.device
    ds, ev = synthetic(n), synthetic(max(64, n // 10), seed=1)
    steps = max(1, n // 256)
    overhead("overhead tutorial (batch 256)", args.reps,
             lambda: plain_loop(PlainMNISTModel(), ds, 256, steps, dev, True),
             lambda: experiment_loop(MNISTModel, ds, ev, 256, steps, dev, store, None), 1.10,
             f"{steps} steps, 1 call, incl. close")
    rtrain, revals = resnet_data(args)
    rsteps = max(1, args.resnet_samples // args.resnet_batch)

    def plain_resnet() -> torch.nn.Module:
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=10)

    overhead("overhead resnet18", args.reps,
             lambda: plain_loop(plain_resnet(), rtrain, args.resnet_batch, rsteps, dev, False),
             lambda: experiment_loop(resnet, rtrain, revals, args.resnet_batch, rsteps, dev, store,
                                     torch.nn.CrossEntropyLoss(reduction="none")), 1.05,
             f"{rsteps} steps of {args.resnet_batch}, {args.resnet_size}×{args.resnet_size}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the code paths in seconds (on the CPU)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu (add --tiny for a quick run)")
    tiny = args.tiny
    args.epochs = 1 if tiny else 8
    args.resnet_samples, args.resnet_size, args.resnet_batch = (16, 16, 8) if tiny else (2048, 32, 64)
    args.tutorial_samples = 512 if tiny else 60_000
    args.reps = 1 if tiny else 5
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"WeightsLab GPU check on {args.device} ({name}), torch {torch.__version__}"
          f"{', tiny sizes' if tiny else ''}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        step("tutorial", lambda: tutorial(args, str(Path(tmp) / "demo")))
        exp = resnet_edits(args, str(Path(tmp) / "resnet"))
        step("resnet18 replay from start", lambda: resnet_replay(args, exp))
        exp.store.close()
        try:
            overheads(args, str(Path(tmp) / "overhead"))
        except Exception as e:  # noqa: BLE001 - reported in the table
            traceback.print_exc()
            FAILED.append("overhead")
            ROWS.append(("overhead", "-", "FAILED", f"{type(e).__name__}: {e}"[:160]))
    print(f"\n{'check':<30} {'seconds':>8}  {'result':<10} note")
    for check, seconds, result, note in ROWS:
        print(f"{check:<30} {seconds:>8}  {result:<10} {note}")
    print(f"\n{len(ROWS)} rows in {time.perf_counter() - started:.0f} s; "
          f"{'all checks passed' if not FAILED else 'FAILED: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
