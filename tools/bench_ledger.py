"""Benchmark of the per-sample ledger (weightslab.ledger).

Measures, on CPU:

- per-batch bookkeeping (``update_batch`` of a batch's ids, losses, predictions,
  labels) against one training step of the tutorial's MNISTModel at batch 256
  (target: under 2% of the step), plus the same two loops end to end through a
  DataLoader (plain ``TensorDataset`` + shuffle vs ``LedgeredDataset`` +
  ``LedgerSampler`` + ``update_batch``), interleaved so both see the same machine;
- a Python-predicate deny (the tutorial's lambda) over 60,000 samples;
- the vectorised ``deny_samples_where`` over 1,000,000 samples (and the Python
  predicate over the same million, for the ratio), whole operation and the
  selection step alone (the whole operation also lists the changed ids for its
  record, which costs about 20 ns an id);
- ``get_dataframe()`` at 60,000 samples (target: under 50 ms);
- bytes per sample at 1,000,000 samples after one full pass, steady and peak
  (update, drain of the pass history, dirty ids), by ``tracemalloc`` (target: ≤ 64).

Usage:
    python tools/bench_ledger.py [--json results.json] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from weightslab.ledger import LedgeredDataset, LedgerSampler
from weightslab.ledger.selection import predicate_mask, query_mask

BATCH = 256
TUTORIAL_FN = lambda id, age, loss, times, denied, pred, label: loss <= 1.5  # noqa: E731 - the tutorial's


class MNISTModel(nn.Module):
    """The tutorial's MNISTModel with plain torch.nn layers (same shapes and forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer0 = nn.Conv2d(in_channels=1, out_channels=2, kernel_size=3)
        self.mpool0 = nn.MaxPool2d(2)
        self.layer1 = nn.Conv2d(in_channels=2, out_channels=4, kernel_size=3)
        self.mpool1 = nn.MaxPool2d(2)
        self.layer2 = nn.Conv2d(in_channels=4, out_channels=10, kernel_size=3)
        self.mpool2 = nn.MaxPool2d(2)
        self.out = nn.Linear(in_features=10, out_features=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mpool0(F.relu(self.layer0(x)))
        x = self.mpool1(F.relu(self.layer1(x)))
        x = self.mpool2(F.relu(self.layer2(x)))
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=1)


def _median_s(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _mnist_like(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def _seen_ledger(n: int, split: str = "train") -> LedgeredDataset:
    ds = LedgeredDataset(_Virtual(n), split)
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(n)
    for start in range(0, n, 4096):
        b = ids[start : start + 4096]
        ds.update_batch(b, torch.rand(len(b), generator=g) * 3, b % 10, (b * 7) % 10, start)
    ds.drain_history()
    ds.take_dirty_ids()
    return ds


class _Virtual(Dataset):
    """A dataset of ``n`` tiny items that holds no data (so memory figures count the ledger only)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1), i % 10


# ---------------------------------------------------------------------------- measurements


def bench_bookkeeping(steps: int) -> dict[str, float]:
    """One training step vs the bookkeeping of the same batch, both at batch 256."""
    torch.manual_seed(0)
    model = MNISTModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = _mnist_like(BATCH * 8)
    ledger = LedgeredDataset(data, "train")
    x, y = data.tensors[0][:BATCH], data.tensors[1][:BATCH]
    ids = torch.randperm(len(data))[:BATCH]
    state: dict[str, torch.Tensor] = {}

    def step() -> None:
        out = model(x)
        losses = F.nll_loss(out, y, reduction="none")
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        opt.step()
        state["losses"], state["out"] = losses, out

    def bookkeeping() -> None:
        ledger.update_batch(ids, state["losses"], state["out"].argmax(1), y, 1000)

    for _ in range(5):
        step()
        bookkeeping()
    t_step = _median_s(step, steps)
    t_book = _median_s(bookkeeping, steps * 20)
    return {
        "train_step_ms": t_step * 1e3,
        "update_batch_us": t_book * 1e6,
        "bookkeeping_pct_of_step": 100 * t_book / t_step,
    }


def bench_end_to_end(batches: int, rounds: int) -> dict[str, float]:
    """The same training loop fed by a plain shuffled DataLoader vs the ledger's loader + update_batch."""
    data = _mnist_like(60_000)
    ledger = LedgeredDataset(data, "train")
    plain_loader = DataLoader(
        data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    ledger_loader = DataLoader(ledger, batch_size=BATCH, sampler=LedgerSampler(ledger, seed=0))

    def run(loader: DataLoader, with_ledger: bool) -> float:
        torch.manual_seed(0)
        model = MNISTModel()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        it = iter(loader)
        t = time.perf_counter()
        for age in range(batches):
            batch = next(it)
            out = model(batch[0])
            losses = F.nll_loss(out, batch[1], reduction="none")
            opt.zero_grad(set_to_none=True)
            losses.mean().backward()
            opt.step()
            if with_ledger:
                ledger.update_batch(batch[2], losses, out.argmax(1), batch[1], age * BATCH)
        return time.perf_counter() - t

    run(plain_loader, False)
    run(ledger_loader, True)
    plain, led = [], []
    for _ in range(rounds):  # interleaved, so drift in machine speed hits both
        plain.append(run(plain_loader, False))
        led.append(run(ledger_loader, True))
    p, q = statistics.median(plain), statistics.median(led)
    return {
        "plain_loop_ms_per_batch": 1e3 * p / batches,
        "ledger_loop_ms_per_batch": 1e3 * q / batches,
        "ledger_over_plain": q / p,
    }


def bench_predicate_deny(n: int, repeat: int) -> float:
    def once() -> None:
        ds = _seen_ledger(n)
        t = time.perf_counter()
        ds.deny_samples_with_predicate(TUTORIAL_FN)
        times.append(time.perf_counter() - t)

    times: list[float] = []
    for _ in range(repeat):
        once()
    return statistics.median(times)


def bench_where_deny(n: int, repeat: int) -> float:
    times: list[float] = []
    for _ in range(repeat):
        ds = _seen_ledger(n)
        t = time.perf_counter()
        ds.deny_samples_where("prediction_loss <= 1.5")
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_selection(n: int, repeat: int) -> dict[str, float]:
    """The selection step alone (no record of the ids): Python predicate vs query, over ``n`` samples."""
    ds = _seen_ledger(n)
    t_pred = _median_s(lambda: predicate_mask(TUTORIAL_FN, ds.stats), 1)
    t_query = _median_s(lambda: query_mask("prediction_loss <= 1.5", ds.stats), repeat)
    return {"predicate_selection_1m_ms": t_pred * 1e3, "query_selection_1m_ms": t_query * 1e3}


def bench_dataframe(n: int, repeat: int) -> float:
    ds = _seen_ledger(n)
    ds.get_dataframe()
    return _median_s(ds.get_dataframe, repeat)


def bench_memory(n: int) -> dict[str, float]:
    """Bytes per sample held by a ledger of ``n`` samples after one full pass, and the peak on the way."""
    ids = torch.randperm(n)
    losses = torch.rand(n)
    preds = torch.randint(0, 10, (n,))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ds = LedgeredDataset(_Virtual(n), "train")
    for start in range(0, n, BATCH):
        s = slice(start, start + BATCH)
        ds.update_batch(ids[s], losses[s], preds[s], preds[s], start)
    steady = tracemalloc.get_traced_memory()[0] - base
    hist = ds.drain_history()
    dirty = ds.take_dirty_ids()
    del hist, dirty
    peak = tracemalloc.get_traced_memory()[1] - base
    after_drain = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "bytes_per_sample_steady_one_pass": steady / n,
        "bytes_per_sample_after_drain": after_drain / n,
        "bytes_per_sample_peak": peak / n,
    }


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args(argv)
    q = args.quick

    book = bench_bookkeeping(steps=10 if q else 60)
    e2e = bench_end_to_end(batches=10 if q else 40, rounds=1 if q else 3)
    pred60k = bench_predicate_deny(60_000, repeat=1 if q else 3)
    where1m = bench_where_deny(1_000_000, repeat=1 if q else 3)
    pred1m = bench_predicate_deny(1_000_000, repeat=1)
    sel = bench_selection(1_000_000, repeat=3 if q else 10)
    df60k = bench_dataframe(60_000, repeat=5 if q else 30)
    mem = bench_memory(1_000_000)

    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "cpu_threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "batch_size": BATCH,
        **book,
        **e2e,
        "predicate_deny_60k_ms": pred60k * 1e3,
        "predicate_deny_1m_ms": pred1m * 1e3,
        "where_deny_1m_ms": where1m * 1e3,
        "where_speedup_vs_predicate_1m": pred1m / where1m,
        **sel,
        "get_dataframe_60k_ms": df60k * 1e3,
        **mem,
    }
    rows = [
        ("training step, MNISTModel, batch 256", f"{book['train_step_ms']:.2f} ms", ""),
        (
            "update_batch, batch 256",
            f"{book['update_batch_us']:.1f} us",
            f"{book['bookkeeping_pct_of_step']:.2f}% of a step (target < 2%)",
        ),
        ("loop per batch: plain DataLoader", f"{e2e['plain_loop_ms_per_batch']:.2f} ms", ""),
        (
            "loop per batch: ledger + sampler + update",
            f"{e2e['ledger_loop_ms_per_batch']:.2f} ms",
            f"{e2e['ledger_over_plain']:.3f}x plain",
        ),
        ("deny, Python predicate, 60,000", f"{pred60k * 1e3:.1f} ms", ""),
        ("deny, Python predicate, 1,000,000", f"{pred1m * 1e3:.0f} ms", ""),
        ("deny_samples_where, 1,000,000", f"{where1m * 1e3:.1f} ms", f"{pred1m / where1m:.0f}x faster"),
        ("  selection only: predicate, 1,000,000", f"{sel['predicate_selection_1m_ms']:.0f} ms", ""),
        (
            "  selection only: query, 1,000,000",
            f"{sel['query_selection_1m_ms']:.2f} ms",
            f"{sel['predicate_selection_1m_ms'] / sel['query_selection_1m_ms']:.0f}x faster",
        ),
        ("get_dataframe, 60,000", f"{df60k * 1e3:.2f} ms", "target < 50 ms"),
        (
            "memory, 10^6 samples + one pass of history",
            f"{mem['bytes_per_sample_steady_one_pass']:.1f} B/sample",
            "target <= 64",
        ),
        ("memory peak (pass, drain, dirty ids)", f"{mem['bytes_per_sample_peak']:.1f} B/sample", ""),
        ("memory after drain", f"{mem['bytes_per_sample_after_drain']:.1f} B/sample", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"ledger benchmark (CPU, {torch.get_num_threads()} threads, torch {torch.__version__})")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>14}  {note}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
