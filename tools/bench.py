"""The benchmark suite: every scenario side by side with its baseline, in one run.

Each scenario alternates baseline and WeightsLab runs over several repetitions
on the same machine and reports medians and their ratio (these machines are
shared and noisy: only ratios measured side by side mean anything). Targets
from SPEC §5 and issue #8. Prints a table and writes JSON.

    python tools/bench.py [--quick] [--only NAME ...] [--json bench.json]

Scenarios:
  train_tutorial   tutorial model, batch 256, 60k synthetic 28×28: plain loop vs Experiment  (≤ 1.10);
                   also with items read one by one on both sides (the same loader work)
  train_tutorial_ddp  2 gloo processes (1 thread each), global batch 256: plain DDP loop vs Experiment
                   (tools/bench_ddp.py: events agreed, statistics gathered, rank 0 writes)  (≤ 1.10)
  train_tutorial_cpu  the same, items one by one, in process CPU time with 1 torch thread
                   (stable on a noisy machine: the work WeightsLab adds)             (≤ 1.10)
  train_tabular    8 → 16 → 2 MLP, batch 512, 1 epoch of 4·10^5 and 10^6 tabular samples: plain loop vs
                   Experiment, incl. the final sample_stats write; also against a loop that slices shuffled
                   tensors (no loader), and in CPU time with 1 thread                      (≤ 1.10)
  train_resnet18   converted torchvision ResNet-18, batch 64, 32×32: plain loop vs Experiment (≤ 1.05)
  train_resnet18_cpu  the same in process CPU time with 1 torch thread                 (≤ 1.05)
  train_resnet18_amp  the same with bf16 autocast + OneCycleLR per batch + norm clipping  (≤ 1.05)
  dump_load        exp.dump()+exp.load() vs torch.save/torch.load of model+optimizer state  (≤ 1.5)
  dump_dedup       bytes written by a dump right after a one-layer edit vs the first dump
  stats_upsert     sample_stats upserts at 10^4, 10^5, 10^6 rows (SQLite, PostgreSQL): linear?
  top100           top-100-by-loss query over 10^6 rows on SQLite                           (< 100 ms)
  replay           replay throughput vs the original training throughput                   (≥ 0.9)
  ledger_memory    ledger bytes per sample at 10^6 samples                                  (≤ 64)
  fingerprint      a state's fast digests (version 2) vs its SHA-256 blob hashes (version 1), GB/s  (≥ 5)
  cli_startup      each read-only `weightslab` command (experiments, events, lineage, audit, sql) on a small store,
                   wall time and its ratio to `python -c pass`, alternated (tools/bench_cli.py; ≤ 0.5 s quiet);
                   `replay`'s fixed overhead beyond the work it reports, beside import torch + one optimizer
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import optim
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import ItemByItem, PlainMNISTModel, synthetic  # noqa: E402

from weightslab import Experiment, convert_to_ops  # noqa: E402
from weightslab.demo import MNISTModel  # noqa: E402
from weightslab.experiment.allocator import tune_malloc  # noqa: E402

RESULTS: list[dict[str, Any]] = []


def record(name: str, baseline: float | None, subject: float, unit: str, target: str, ok: bool | None,
           note: str = "", ratio: float | None = None, runs: dict[str, list[float]] | None = None) -> None:
    if ratio is None:
        ratio = subject / baseline if baseline else None
    RESULTS.append({"scenario": name, "baseline": baseline, "weightslab": subject, "ratio": ratio, "unit": unit,
                    "target": target, "met": ok, "note": note, **({"runs": runs} if runs else {})})
    r = f"{ratio:.3f}" if ratio is not None else "-"
    b = f"{baseline:.4g}" if baseline is not None else "-"
    print(f"  {name:<34}{b:>11}{subject:>12.4g} {unit:<6}{r:>8}  {target:<10}{'' if ok is None else ('met' if ok else 'MISSED')}"
          f"  {note}", flush=True)


Measured = tuple[float, float, float, list[float], list[float]]


def alternate(reps: int, base: Callable[[], float], subject: Callable[[], float]) -> Measured:
    """Run both sides ``reps`` times, adjacent in time, in ABBA order (so slow drift of the machine
    cancels); returns (median baseline, median subject, median of the per-pair ratios, the runs)."""
    b, s = [], []
    for i in range(reps):
        if i % 2 == 0:
            b.append(base())
            s.append(subject())
        else:
            s.append(subject())
            b.append(base())
    return statistics.median(b), statistics.median(s), statistics.median(x / y for x, y in zip(s, b)), b, s


def compare(name: str, measured: Measured, limit: float, note: str = "", at_least: bool = False) -> None:
    """Record a side-by-side timing: the ratio is the median of per-pair ratios (target ≤ or ≥ ``limit``)."""
    base, subj, ratio, b_runs, s_runs = measured
    ok = ratio >= limit if at_least else ratio <= limit
    record(name, base, subj, "s", f"{'≥' if at_least else '≤'} {limit:g}", ok, note, ratio=ratio,
           runs={"baseline": [round(x, 5) for x in b_runs], "weightslab": [round(x, 5) for x in s_runs]})


# -- training overhead -------------------------------------------------------------------------------

Clock = Callable[[], float]


def _settle() -> None:
    """Collect garbage left by set-up (model conversion, earlier repetitions) before a timed part.

    Both sides call it just before their clock starts. Python's full collection walks every
    tracked object (~430k once torch, torchvision and weightslab are imported: ~0.2 s here) and
    runs when enough objects have survived younger collections; without this, the objects a
    repetition's set-up leaves make one land inside some later timed call, mostly the side that
    allocates more. Garbage made during the timed part is still collected, and counted.
    """
    gc.collect()


def _plain_loop(model: torch.nn.Module, ds: Dataset, batch: int, steps: int, clock: Clock = time.perf_counter) -> float:
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    model.train()
    _settle()
    t = clock()
    done = 0
    while done < steps:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.nll_loss(F.log_softmax(model(x), dim=1) if not _logsoftmax(model) else model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return clock() - t


def _logsoftmax(model: torch.nn.Module) -> bool:
    return isinstance(model, PlainMNISTModel)


def _experiment_loop(make_model: Callable[[], Any], ds: Dataset, eval_ds: Dataset, batch: int,
                     steps: int, per_call: int, store: str, clock: Clock = time.perf_counter) -> float:
    exp = Experiment(model=make_model(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=eval_ds,
                     learning_rate=1e-3, batch_size=batch, name=f"b-{uuid.uuid4().hex[:8]}", store=store,
                     progress=False, criterion=_criterion_for(make_model))
    _settle()
    t = clock()
    done = 0
    while done < steps:
        k = min(per_call, steps - done)
        exp.train_n_steps(k)
        done += k
    exp.close()  # waits for the background statistics writer: recording is part of the cost
    elapsed = clock() - t
    exp.store.close()
    return elapsed


def _criterion_for(make_model: Callable[[], Any]) -> Any:
    if make_model is MNISTModel:
        return None  # the tutorial model outputs log-probabilities: the default NLL fits
    return torch.nn.CrossEntropyLoss(reduction="none")


def scenario_train_tutorial(args: argparse.Namespace) -> None:
    n = 12_000 if args.quick else 60_000
    ds, ev = synthetic(n), synthetic(1000, seed=1)
    steps = (n + 255) // 256
    with tempfile.TemporaryDirectory() as store:
        _plain_loop(PlainMNISTModel(), ds, 256, steps)  # warm-up
        _experiment_loop(MNISTModel, ds, ev, 256, steps, steps, store)
        m = alternate(args.reps, lambda: _plain_loop(PlainMNISTModel(), ds, 256, steps),
                      lambda: _experiment_loop(MNISTModel, ds, ev, 256, steps, steps, store))
    compare("train tutorial (1 epoch, 1 call)", m, 1.10, f"{n} samples, batch 256, incl. final stats write")
    with tempfile.TemporaryDirectory() as store:
        m = alternate(args.reps, lambda: _plain_loop(PlainMNISTModel(), ds, 256, 3 * steps),
                      lambda: _experiment_loop(MNISTModel, ds, ev, 256, 3 * steps, steps, store))
    compare("train tutorial (3 epochs, 1 call each)", m, 1.10, "steady state: a write overlaps the next epoch")
    with tempfile.TemporaryDirectory() as store:
        m = alternate(args.reps, lambda: _plain_loop(PlainMNISTModel(), ds, 256, 3 * steps),
                      lambda: _experiment_loop(MNISTModel, ds, ev, 256, 3 * steps, 25, store))
    compare("train tutorial (3 epochs, 25 steps a call)", m, 1.10, f"{(steps + 24) // 25} train events an epoch")
    # The Experiment reads a TensorDataset a batch at a time (weightslab.ledger.batching), which a plain
    # DataLoader does not: through a dataset of single items both loaders do the same work, and the
    # ratio is what tracking, ledger, events and flushes add.
    items, ev_items = ItemByItem(ds), ItemByItem(ev)
    with tempfile.TemporaryDirectory() as store:
        m = alternate(args.reps, lambda: _plain_loop(PlainMNISTModel(), items, 256, steps),
                      lambda: _experiment_loop(MNISTModel, items, ev_items, 256, steps, steps, store))
    compare("train tutorial, items one by one", m, 1.10, "1 epoch, 1 call; the same loader work on both sides")


T = TypeVar("T")


def _one_torch_thread(fn: Callable[[], T]) -> T:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


# Process CPU seconds of the timed part (all threads: torch's, the hashing pool, the statistics writer).
_cpu = time.process_time


def scenario_train_tutorial_cpu(args: argparse.Namespace) -> None:
    """The same comparison in CPU time with one torch thread, items read one by one on both sides:
    the work WeightsLab adds (its writer thread included), far less noisy than wall time on a
    shared machine."""
    n = 12_000 if args.quick else 60_000
    ds, ev = ItemByItem(synthetic(n)), ItemByItem(synthetic(1000, seed=1))
    steps = (n + 255) // 256
    with tempfile.TemporaryDirectory() as store:
        m = _one_torch_thread(lambda: alternate(
            max(3, args.reps - 2), lambda: _plain_loop(PlainMNISTModel(), ds, 256, 2 * steps, _cpu),
            lambda: _experiment_loop(MNISTModel, ds, ev, 256, 2 * steps, steps, store, _cpu)))
    compare("train tutorial, CPU time, 1 thread", m, 1.10,
            "2 epochs, 1 call each, items one by one; process CPU seconds")


# -- the per-sample regime: a tiny model on many samples ---------------------------------------------

def _tabular(n: int, seed: int = 0) -> TensorDataset:
    """``n`` rows of 8 features (a fixed-seed normal draw) and a 2-class label from a rule of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).long())


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _mlp_ops() -> Any:
    return convert_to_ops(_mlp())


def _plain_tabular(ds: TensorDataset, batch: int, clock: Clock = time.perf_counter, sliced: bool = False) -> float:
    """The plain loop: a shuffling DataLoader over the TensorDataset (the usual idiom, as in the other rows), or
    with ``sliced`` the fastest loop for in-memory tensors: a slice of one shuffled order per batch (no loader)."""
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    inputs, labels = ds.tensors
    g = torch.Generator().manual_seed(0)
    model.train()
    _settle()
    t = clock()
    if sliced:
        order = torch.randperm(len(inputs), generator=g)
        batches: Any = ((inputs[i], labels[i]) for i in order.split(batch))
    else:
        batches = DataLoader(ds, batch_size=batch, shuffle=True, generator=g)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return clock() - t


def _tabular_pairs(n: int, ev: TensorDataset, reps: int, clock: Clock = time.perf_counter,
                   sliced: bool = False) -> Measured:
    """Alternated runs of both sides over one epoch of ``n`` samples (after one untimed run of each)."""
    ds, steps = _tabular(n), (n + 511) // 512
    with tempfile.TemporaryDirectory() as store:
        _plain_tabular(ds, 512, clock, sliced)
        _experiment_loop(_mlp_ops, ds, ev, 512, steps, steps, store, clock)
        return alternate(reps, lambda: _plain_tabular(ds, 512, clock, sliced),
                         lambda: _experiment_loop(_mlp_ops, ds, ev, 512, steps, steps, store, clock))


def scenario_train_tabular(args: argparse.Namespace) -> None:
    """The per-sample regime (issue #26): an 8 → 16 → 2 MLP costs ~nothing per sample, so what WeightsLab
    does per batch and per sample (sampler, batch fetch, ledger, statistics rows) is what shows. One epoch
    at batch 512 in one call, the final ``sample_stats`` write of every sample included."""
    sizes = [40_000, 100_000] if args.quick else [400_000, 1_000_000]
    ev = _tabular(1000, seed=1)
    for n in sizes:
        m = _tabular_pairs(n, ev, args.reps if n < 1_000_000 else max(3, args.reps - 2))
        compare(f"train tabular MLP, {n:,} samples", m, 1.10,
                "batch 512, 1 epoch, 1 call, incl. final stats write; plain: shuffling DataLoader")
    m = _tabular_pairs(sizes[0], ev, args.reps, sliced=True)
    compare("train tabular MLP, vs sliced tensors", m, 1.10,
            f"{sizes[0]:,} samples; plain: one shuffled order sliced per batch, no loader (the fastest plain loop)")
    m = _one_torch_thread(lambda: _tabular_pairs(sizes[0], ev, max(3, args.reps - 2), _cpu))
    compare("train tabular MLP, CPU time, 1 thread", m, 1.10,
            f"{sizes[0]:,} samples, vs the DataLoader; process CPU seconds (the writer thread included)")


def _resnet() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _resnet_ops() -> Any:
    return convert_to_ops(_resnet())


def _resnet_data(n_steps: int) -> tuple[Dataset, Dataset]:
    return TensorDataset(torch.randn(64 * n_steps, 3, 32, 32), torch.randint(0, 10, (64 * n_steps,))), \
        TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))


def _plain_resnet(ds: Dataset, clock: Clock = time.perf_counter) -> float:
    model = _resnet()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    model.train()
    _settle()
    t = clock()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return clock() - t


def scenario_train_resnet18(args: argparse.Namespace) -> None:
    n_steps = 10 if args.quick else 30
    ds, ev = _resnet_data(n_steps)
    with tempfile.TemporaryDirectory() as store:
        _plain_resnet(ds)
        # 4 pairs more than the other rows: single pairs spread over ±10 % on this machine, the median
        # of 11 is steadier than that of 7, and this row's target leaves the least room.
        m = alternate(max(3, args.reps + 4), lambda: _plain_resnet(ds),
                      lambda: _experiment_loop(_resnet_ops, ds, ev, 64, n_steps, n_steps, store))
    compare("train resnet18 (1 call)", m, 1.05, f"{n_steps} steps, batch 64, 32×32")


def scenario_train_resnet18_cpu(args: argparse.Namespace) -> None:
    """ResNet-18 in process CPU time with one torch thread: the work WeightsLab adds (trigger
    counting, the train event's fingerprint and neuron rows), without the wall-time noise of a
    shared machine (single pairs of the wall-time scenario differ by up to ±20%)."""
    n_steps = 10 if args.quick else 30
    ds, ev = _resnet_data(n_steps)
    with tempfile.TemporaryDirectory() as store:
        _one_torch_thread(lambda: _plain_resnet(ds))  # warm-up (the first run of a process is slower)
        m = _one_torch_thread(lambda: alternate(
            max(3, args.reps - 2), lambda: _plain_resnet(ds, _cpu),
            lambda: _experiment_loop(_resnet_ops, ds, ev, 64, n_steps, n_steps, store, _cpu)))
    compare("train resnet18, CPU time, 1 thread", m, 1.05, f"{n_steps} steps, 1 call; process CPU seconds")


def _plain_resnet_amp(ds: Dataset, n_steps: int, clock: Clock = time.perf_counter) -> float:
    """The plain loop a researcher writes for bf16 autocast + OneCycleLR (per batch) + norm clipping."""
    model = _resnet()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=n_steps)
    loader = DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    model.train()
    _settle()
    t = clock()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y, reduction="none")
        loss.float().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return clock() - t


def _experiment_resnet_amp(ds: Dataset, ev: Dataset, n_steps: int, store: str, clock: Clock = time.perf_counter
                           ) -> float:
    exp = Experiment(model=_resnet_ops(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=ev,
                     learning_rate=1e-3, batch_size=64, name=f"b-{uuid.uuid4().hex[:8]}", store=store,
                     progress=False, criterion=torch.nn.CrossEntropyLoss(reduction="none"), amp="bf16",
                     grad_clip=1.0, scheduler=(optim.lr_scheduler.OneCycleLR,
                                               {"max_lr": 1e-2, "total_steps": n_steps}, "batch"))
    _settle()
    t = clock()
    exp.train_n_steps(n_steps)
    exp.close()
    elapsed = clock() - t
    exp.store.close()
    return elapsed


def scenario_train_resnet18_amp(args: argparse.Namespace) -> None:
    """ResNet-18 with bf16 autocast, OneCycleLR stepped per batch and gradient clipping: the built-in step's
    options against the plain loop that does the same (issue #21)."""
    n_steps = 10 if args.quick else 30
    ds, ev = _resnet_data(n_steps)
    with tempfile.TemporaryDirectory() as store:
        _plain_resnet_amp(ds, n_steps)
        m = alternate(max(3, args.reps), lambda: _plain_resnet_amp(ds, n_steps),
                      lambda: _experiment_resnet_amp(ds, ev, n_steps, store))
    compare("train resnet18, bf16+OneCycle+clip", m, 1.05, f"{n_steps} steps, batch 64, 32×32, 1 call")


# -- checkpoints ------------------------------------------------------------------------------------

def scenario_dump_load(args: argparse.Namespace) -> None:
    for label, make_model, shape in (("tutorial", MNISTModel, (1, 28, 28)), ("resnet18", _resnet_ops, (3, 32, 32))):
        _dump_load(args, label, make_model, shape)


def _dump_load(args: argparse.Namespace, label: str, make_model: Callable[[], Any], shape: tuple[int, ...]) -> None:
    ds = TensorDataset(torch.randn(256, *shape), torch.randint(0, 10, (256,)))
    with tempfile.TemporaryDirectory() as store:
        exp = Experiment(model=make_model(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=ds,
                         learning_rate=1e-3, batch_size=64, name=label, store=store, progress=False,
                         criterion=_criterion_for(make_model))
        exp.train_n_steps(2)

        def torch_roundtrip() -> float:
            t = time.perf_counter()
            path = Path(store) / "torch.pt"
            torch.save({"model": exp.model.state_dict(), "optimizer": exp.optimizer.state_dict()}, path)
            state = torch.load(path, weights_only=True)
            exp.model.load_state_dict(state["model"])
            exp.optimizer.load_state_dict(state["optimizer"])
            return time.perf_counter() - t

        def ours() -> float:
            exp.model.layers[0].set_per_neuron_learning_rate({0}, lr=float(np.random.rand()))  # a new state
            t = time.perf_counter()
            cid = exp.dump()
            exp.load(checkpoint_id=cid)
            return time.perf_counter() - t

        # One untimed round of each side first: the experiment's first dump writes every tensor (later
        # ones only what changed) and torch's first save warms its own caches. A round takes
        # milliseconds, where the machine's noise is large: 3x the repetitions of the other scenarios.
        warm = torch_roundtrip(), ours()
        compare(f"dump+load {label}", alternate(3 * args.reps, torch_roundtrip, ours), 1.5,
                f"full state (ledger, RNG, snapshots) vs model+optimizer; first round {warm[1] / warm[0]:.2f}")
        if label == "resnet18":
            first = exp.chkpt_manager.last_dump_bytes
            exp.model.layers[5].set_per_neuron_learning_rate({1}, lr=0.5)
            exp.dump()
            second = exp.chkpt_manager.last_dump_bytes
            total = sum(t.numel() * t.element_size() for t in exp.model.state_dict().values())
            record("second dump after 1-layer edit", float(total), float(second), "bytes", "changed only",
                   second < total / 100, f"model state {total:,} B; the dump before it wrote {first:,} B")
        exp.close()
        exp.store.close()


# -- statistics tables ------------------------------------------------------------------------------

def _pg_store() -> tuple[Any, Callable[[], None]] | None:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        from weightslab.history.store import Store

        base = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        u = make_url(base)
        info = dict(host=u.host, port=u.port, user=u.username, dbname=u.database, connect_timeout=3)
        schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(**info, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        store = Store.open(f"{base}?options=-csearch_path%3D{schema}")

        def drop() -> None:
            store.close()
            with psycopg.connect(**info, autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return store, drop
    except Exception as e:  # noqa: BLE001 - no server: skip that backend
        print(f"  (PostgreSQL not available: {e})")
        return None


def scenario_stats_upsert(args: argparse.Namespace) -> None:
    from bench_store import columns

    from weightslab.history.stats import upsert_sample_stats
    from weightslab.history.store import Store

    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    backends: list[tuple[str, Any, Callable[[], None]]] = []
    tmp = tempfile.TemporaryDirectory()
    s = Store.open(tmp.name)
    backends.append(("sqlite", s, s.close))
    pg = _pg_store()
    if pg:
        backends.append(("postgresql", *pg))
    for name, store, close in backends:
        per_row = []
        for n in sizes:
            exp = store.create_experiment(f"up-{n}-{uuid.uuid4().hex[:6]}").experiment_id
            with store.transaction() as conn:
                upsert_sample_stats(conn, exp, "train", columns(n, 0))
            cols = columns(n, 1)
            t = time.perf_counter()
            with store.transaction() as conn:
                upsert_sample_stats(conn, exp, "train", cols)
            dt = time.perf_counter() - t
            per_row.append(dt / n)
            record(f"upsert {n:,} rows ({name})", None, n / dt, "rows/s", "linear", None,
                   f"{dt * 1e6 / n:.2f} µs/row")
        growth = per_row[-1] / per_row[0]
        record(f"upsert cost/row 10^6 vs 10^4 ({name})", per_row[0], per_row[-1], "s/row", "≈ 1 (linear)",
               growth < 2.0)
        if name == "sqlite":
            q = []
            for _ in range(5):
                t = time.perf_counter()
                store.query("SELECT sample_id, prediction_loss FROM sample_stats WHERE experiment_id = :e AND "
                            "split = 'train' ORDER BY prediction_loss DESC LIMIT 100", {"e": exp})
                q.append((time.perf_counter() - t) * 1000)
            ms = statistics.median(q)
            record(f"top-100 by loss over {sizes[-1]:,} rows", None, ms, "ms", "< 100 ms", ms < 100)
        if name == "postgresql":  # issue #26: 3 epochs rewriting every row, no VACUUM: size vs the live rows
            from bench_store import pg_epochs

            fresh = _pg_store()  # a table of this experiment's rows only
            assert fresh is not None
            size = pg_epochs(fresh[0], sizes[-1], 3, upsert_sample_stats, report=(3,))[-1]
            fresh[1]()
            hot = size["n_tup_hot_upd"] / max(size["n_tup_upd"], 1)
            record(f"sample_stats size after 3 epochs, {sizes[-1]:,} rows", float(size["live_bytes"]),
                   float(size["bytes"]), "bytes", "≤ 2× live", size["bytes"] <= 2 * size["live_bytes"],
                   f"no VACUUM; {hot:.0%} of updates HOT; {size['n_dead_tup']:,} dead rows (pruned by the next write)")
        close()
    tmp.cleanup()


# -- replay -----------------------------------------------------------------------------------------

def scenario_replay(args: argparse.Namespace) -> None:
    from weightslab.experiment.replica import replay_to, replica

    n = 12_000 if args.quick else 30_000
    ds, ev = synthetic(n), synthetic(1000, seed=1)
    steps = (n + 255) // 256
    with tempfile.TemporaryDirectory() as store:
        train_times, replay_times = [], []
        for r in range(max(2, args.reps // 2)):
            torch.manual_seed(r)
            exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=ds, eval_dataset=ev,
                             learning_rate=1e-3, batch_size=256, name=f"replay-{r}", store=store, progress=False)
            _settle()
            t = time.perf_counter()
            for _ in range(4):
                exp.train_n_steps(steps // 4)
            train_times.append(time.perf_counter() - t)
            exp.close()
            rep = replica(exp.store, f"replay-{r}", model=MNISTModel(), train_dataset=ds, eval_dataset=ev)
            _settle()
            t = time.perf_counter()
            outcome = replay_to(rep, from_start=True)
            replay_times.append(time.perf_counter() - t)
            assert outcome.ok, outcome
            exp.store.close()
    tr, rp = statistics.median(train_times), statistics.median(replay_times)
    record("replay throughput / training", tr, rp, "s", "≥ 0.9", tr / rp >= 0.9,
           "ratio = training time / replay time (4 train events, verified)", ratio=tr / rp)


# -- ledger memory ----------------------------------------------------------------------------------

def scenario_ledger_memory(args: argparse.Namespace) -> None:
    import tracemalloc

    from weightslab.ledger import LedgeredDataset

    n = 1_000_000

    class Sized(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.zeros(1), 0

    tracemalloc.start()
    ds = LedgeredDataset(Sized(), "train")
    ids = torch.arange(n)
    for chunk in ids.split(65_536):
        ds.update_batch(chunk, torch.rand(len(chunk)), torch.zeros(len(chunk), dtype=torch.long),
                        torch.zeros(len(chunk), dtype=torch.long), 0)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    record("ledger bytes/sample at 10^6", None, current / n, "B", "≤ 64", current / n <= 64,
           f"peak {peak / n:.1f} B/sample (one pass of history held)")


def scenario_fingerprint(args: argparse.Namespace) -> None:
    """The per-event state fingerprint: fast digests (fingerprint version 2, computed where the tensors
    live) vs the SHA-256 blob hashes of version 1, on the same tensors, side by side; in GB/s."""
    from weightslab.experiment.state import fast_digests, tensor_hashes

    model = _resnet_ops()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
    opt.step()  # the Adam moments exist, as in a fingerprint taken after a train call
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    for i, state in enumerate(opt.state.values()):
        tensors.update({f"optim/{i}/{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    size = sum(t.numel() * t.element_size() for t in tensors.values())

    def timed(digests: Callable[[Any], Any]) -> Callable[[], float]:
        def run() -> float:
            t = time.perf_counter()
            digests(tensors)
            return time.perf_counter() - t
        return run

    base, subj, ratio, _, _ = alternate(5 if args.quick else 15, timed(tensor_hashes), timed(fast_digests))
    record("fingerprint, fast digests", size / base / 1e9, size / subj / 1e9, "GB/s", "≥ 5", size / subj / 1e9 >= 5,
           f"ResNet-18 + Adam, {size / 1e6:.0f} MB in {len(tensors)} tensors, {subj * 1e3:.1f} ms; "
           f"baseline SHA-256 {base * 1e3:.1f} ms", ratio=1 / ratio)


def scenario_train_tutorial_ddp(args: argparse.Namespace) -> None:
    from weightslab.experiment.distributed import launch

    n = 12_000 if args.quick else 60_000
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        code = launch([str(Path(__file__).parent / "bench_ddp.py"), str(out), "--samples", str(n), "--batch", "128",
                       "--reps", str(args.reps)], 2, timeout_s=3600, env={"OMP_NUM_THREADS": "1"})
        if code != 0:
            record("train tutorial, 2 ranks (gloo DDP)", None, float("nan"), "s", "≤ 1.1", False,
                   f"the ranks failed (exit code {code})")
            return
        runs = json.loads(out.read_text())
    for label, b, s in (("train tutorial, 2 ranks (gloo DDP)", runs["baseline"], runs["weightslab"]),
                        ("train tutorial, 2 ranks, CPU s", runs["baseline_cpu"], runs["weightslab_cpu"])):
        measured = (statistics.median(b), statistics.median(s), statistics.median(x / y for x, y in zip(s, b)), b, s)
        compare(label, measured, 1.10, f"{n} samples, {runs['steps']} steps of 2×128, 1 call, incl. close"
                + ("; process CPU time summed over the ranks" if "CPU" in label else ""))


def scenario_cli_startup(args: argparse.Namespace) -> None:
    """Start-up of the read-only commands, in fresh processes beside ``python -c pass`` (tools/bench_cli.py)."""
    import bench_cli

    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        bench_cli.build_store(store)
        load = bench_cli.load()
        quiet = float(load.split()[0]) < 1.0 if load != "n/a" else False  # the targets are for a quiet machine
        for row in bench_cli.measure(store, args.reps):
            name = row["command"].split(" ")[1]
            if "ratio" in row:
                record(f"cli {name}", row["python_c_pass"], row["wall"], "s", "≤ 0.5 s",
                       row["wall"] <= 0.5 if quiet else None,
                       f"ratio = wall / `python -c pass`, median of {args.reps} ABBA pairs; load {load}",
                       ratio=row["ratio"], runs=row["runs"])
            else:
                record(f"cli {name}: fixed overhead", row["torch_floor"], row["overhead"], "s", "≤ 2 s",
                       row["overhead"] <= 2.0 if quiet else None,
                       f"wall {row['wall']:.2f} s − the {row['reported']:.2f} s it reports; baseline: import torch "
                       f"+ one optimizer ({row['beyond_floor']:.2f} s beyond it); load {load}", runs=row["runs"])


SCENARIOS = {
    "cli_startup": scenario_cli_startup,
    "fingerprint": scenario_fingerprint,
    "train_tutorial": scenario_train_tutorial,
    "train_tutorial_ddp": scenario_train_tutorial_ddp,
    "train_tutorial_cpu": scenario_train_tutorial_cpu,
    "train_tabular": scenario_train_tabular,
    "train_resnet18": scenario_train_resnet18,
    "train_resnet18_cpu": scenario_train_resnet18_cpu,
    "train_resnet18_amp": scenario_train_resnet18_amp,
    "dump_load": scenario_dump_load,
    "stats_upsert": scenario_stats_upsert,
    "replay": scenario_replay,
    "ledger_memory": scenario_ledger_memory,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions (a smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per side (default 7, quick 2)")
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--json", default="bench.json", help="where to write the results (default bench.json)")
    args = ap.parse_args()
    args.reps = args.reps or (2 if args.quick else 7)
    # glibc's malloc tuning is process-wide and opt-in (weightslab.tune_malloc()); applying it before
    # anything is timed gives every run of both sides the same allocator (WEIGHTSLAB_TUNE_MALLOC=0: neither).
    allocator = tune_malloc()
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, " \
              f"torch {torch.__version__}, python {platform.python_version()}"
    print(f"WeightsLab benchmarks on {machine}")
    print(f"malloc, both sides: {'tuned' if allocator.applied else 'not tuned'} ({allocator.reason})")
    print(f"  {'scenario':<34}{'baseline':>11}{'weightslab':>12} {'unit':<6}{'ratio':>8}  {'target':<10}")
    for name in args.only or SCENARIOS:
        SCENARIOS[name](args)
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "malloc": {"tuned": allocator.applied, "reason": allocator.reason},
                   "results": RESULTS}, f, indent=2)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
