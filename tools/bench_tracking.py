"""Benchmark: step-time overhead of the neuron-tracking hooks on the tutorial model.

Trains the tutorial's MNISTModel at batch 256 on the CPU (MNIST-shaped random data,
Adam), alternating short reps with tracking off (``TrackingMode.DISABLED``), on
(``TrackingMode.TRAIN``, counted at every forward) and on with batched counting (inside
``model.batched_trigger_counts()``, as the Experiment's loops run), in rotating order.
Prints the median step time of each mode, and the median of the per-rep ratios (each rep
pairs neighbouring measurements, so load from other processes mostly cancels).
Target: ratio <= 1.05.

Usage:
    python tools/bench_tracking.py [--reps 31] [--steps 10] [--batch 256] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from weightslab.surgery import Conv2dWithNeuronOps, LinearWithNeuronOps, NetworkWithOps, TrackingMode


class MNISTModel(NetworkWithOps):
    """The tutorial's model (seed/weightslab-tutorial.md)."""

    def __init__(self) -> None:
        super().__init__()
        self.tracking_mode = TrackingMode.DISABLED
        self.layer0 = Conv2dWithNeuronOps(in_channels=1, out_channels=2, kernel_size=3)
        self.mpool0 = nn.MaxPool2d(2)
        self.layer1 = Conv2dWithNeuronOps(in_channels=2, out_channels=4, kernel_size=3)
        self.mpool1 = nn.MaxPool2d(2)
        self.layer2 = Conv2dWithNeuronOps(in_channels=4, out_channels=10, kernel_size=3)
        self.mpool2 = nn.MaxPool2d(2)
        self.out = LinearWithNeuronOps(in_features=10, out_features=10)
        self.layers = [self.layer0, self.layer1, self.layer2, self.out]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.maybe_update_age(input)
        x = self.mpool0(F.relu(self.layer0(input)))
        x = self.mpool1(F.relu(self.layer1(x)))
        x = self.mpool2(F.relu(self.layer2(x)))
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x, skip_register=True), dim=1)


MODES = ("off", "tracked", "batched")


def run(model: MNISTModel, optimizer: torch.optim.Optimizer, batches: list, mode: str) -> float:
    """Seconds per training step over ``batches`` with tracking ``mode`` (one of :data:`MODES`)."""
    model.tracking_mode = TrackingMode.DISABLED if mode == "off" else TrackingMode.TRAIN
    start = time.perf_counter()
    with model.batched_trigger_counts() if mode == "batched" else contextlib.nullcontext():
        for x, y in batches:
            optimizer.zero_grad()
            F.nll_loss(model(x), y).backward()
            optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=31, help="alternating reps of each mode")
    parser.add_argument("--steps", type=int, default=10, help="training steps per rep and mode")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MNISTModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.attach_optimizer(optimizer)
    batches = [(torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))) for _ in range(args.steps)]
    for mode in MODES:  # warm-up
        run(model, optimizer, batches[:5], mode)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    for rep in range(args.reps):
        for mode in MODES[rep % 3:] + MODES[:rep % 3]:
            times[mode].append(run(model, optimizer, batches, mode))
        for mode in MODES[1:]:
            ratios[mode].append(times[mode][-1] / times["off"][-1])
    plain = statistics.median(times["off"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.reps} reps x {args.steps} steps")
    print(f"{'plain   (tracking off)':<30}: median {plain * 1e3:8.3f} ms/step")
    for mode, label in (("tracked", "tracked (TRAIN, each forward)"), ("batched", "tracked (TRAIN, batched)")):
        print(f"{label:<30}: median {statistics.median(times[mode]) * 1e3:8.3f} ms/step, "
              f"median paired ratio {statistics.median(ratios[mode]):.4f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
