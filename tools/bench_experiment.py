"""Benchmark: training through Experiment (everything on) vs a plain PyTorch loop.

The tutorial's model at batch 256 on 60,000 synthetic 28×28 samples, CPU.
Both sides run one epoch per repetition, alternating, and the medians are
compared (SPEC §5 target: ratio ≤ 1.10). The Experiment side records one
``train`` event per ``--steps-per-call`` steps, each with its state
fingerprint, statistics flush (sample_stats / neuron_stats) and TensorBoard
scalars, on a fresh SQLite store.

    python tools/bench_experiment.py [--reps 5] [--samples 60000] [--steps-per-call 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from weightslab import Experiment
from weightslab.demo import MNISTModel


class PlainMNISTModel(nn.Module):
    """The tutorial's architecture from plain torch.nn layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layer0 = nn.Conv2d(1, 2, 3)
        self.layer1 = nn.Conv2d(2, 4, 3)
        self.layer2 = nn.Conv2d(4, 10, 3)
        self.out = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.layer0(x)), 2)
        x = F.max_pool2d(F.relu(self.layer1(x)), 2)
        x = F.max_pool2d(F.relu(self.layer2(x)), 2)
        return F.log_softmax(self.out(x.view(x.size(0), -1)), dim=1)


def synthetic(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def plain_epoch(ds: TensorDataset, batch: int) -> float:
    torch.manual_seed(0)
    model = PlainMNISTModel()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    model.train()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def experiment_epoch(ds: TensorDataset, eval_ds: TensorDataset, batch: int, store: str, name: str,
                     steps_per_call: int) -> float:
    torch.manual_seed(0)
    exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=eval_ds,
                     device="cpu", learning_rate=1e-2, batch_size=batch, name=name, store=store, progress=False)
    steps = len(exp.train_loader)
    per_call = steps_per_call or steps
    t = time.perf_counter()
    done = 0
    while done < steps:
        k = min(per_call, steps - done)
        exp.train_n_steps(k)
        done += k
    elapsed = time.perf_counter() - t
    exp.close()
    exp.store.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps-per-call", type=int, default=0, help="0: one train_n_steps call per epoch")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ds, eval_ds = synthetic(args.samples), synthetic(1000, seed=1)
    plain, wl = [], []
    with tempfile.TemporaryDirectory() as store:
        plain_epoch(ds, args.batch)  # warm-up (allocator, thread pools)
        for r in range(args.reps):
            plain.append(plain_epoch(ds, args.batch))
            wl.append(experiment_epoch(ds, eval_ds, args.batch, store, f"bench-{r}", args.steps_per_call))
    p, w = statistics.median(plain), statistics.median(wl)
    result = {"scenario": f"tutorial model, batch {args.batch}, {args.samples} samples, CPU",
              "steps_per_call": args.steps_per_call or "epoch", "plain_s": p, "experiment_s": w,
              "ratio": w / p, "target": 1.10, "threads": torch.get_num_threads()}
    print(f"{'scenario':<48}{'plain s':>9}{'weightslab s':>14}{'ratio':>8}{'target':>8}")
    print(f"{result['scenario']:<48}{p:>9.3f}{w:>14.3f}{w / p:>8.3f}{'≤1.10':>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
