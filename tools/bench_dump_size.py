"""What a dump writes at 10^6 samples, blob by blob, and what a dump + load costs.

A tiny MLP (8 → 16 → 2) on N tabular samples (default 10^6), batch 512, the epoch's full
batches (N // 512 steps of ``train_n_steps``, everything on: the sampler is still in the epoch,
so its order is part of the state), then ``exp.dump()``. Every blob the dump names
(the manifest's tensors, the manifest itself, the statistics snapshots) is listed with
its size and whether this dump wrote it (a blob the store already had costs nothing).
With the model this small, the per-sample state (ledger columns, the sampler's order,
the ``sample_stats`` snapshot) is nearly everything.

``--legacy`` lists the blobs of the encoding before (``WLT1``: raw values, the order stored;
snapshots with Parquet's default encodings) too; ``--compare`` times dump + load of the same
state written in the legacy encoding and in the compact one (``WLC1``), alternated
in ABBA order (median of per-pair ratios; the state changes by one trained batch before
each round, so each dump writes its per-sample blobs again).

    python tools/bench_dump_size.py [--samples 1000000] [--compare --reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from torch import nn, optim
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from weightslab import Experiment, convert_to_ops  # noqa: E402
from weightslab.experiment import checkpoints as ckpt_mod  # noqa: E402
from weightslab.history import snapshots as snap_mod  # noqa: E402
from weightslab.history.schema import Blob, Snapshot  # noqa: E402

BATCH = 512
EVAL = 1024


def _mlp() -> Any:
    torch.manual_seed(0)
    return convert_to_ops(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long())


def build(n: int, store: str) -> Experiment:
    return Experiment(model=_mlp(), optimizer_class=optim.Adam, train_dataset=_data(n, 0),
                      eval_dataset=_data(EVAL, 1), learning_rate=1e-3, batch_size=BATCH, name="dumpsize",
                      store=store, progress=False, criterion=nn.CrossEntropyLoss(reduction="none"))


def breakdown(exp: Experiment, before: set[str], cid: int) -> list[dict[str, Any]]:
    """Every blob checkpoint ``cid`` names: what it is, its bytes, its encoding, whether this dump wrote it."""
    store = exp.store
    manifest_hash = exp.chkpt_manager.manifest_of(cid)
    manifest = store.read_manifest(manifest_hash)
    seq = next(r.event_seq for r in store.checkpoints(exp.experiment_id) if r.checkpoint_id == cid)
    named = [("manifest", manifest_hash)] + sorted(manifest.tensors.items())
    with store.engine.connect() as conn:
        snaps = conn.execute(select(Snapshot.table_name, Snapshot.blob_hash)
                             .where(Snapshot.experiment_id == exp.experiment_id, Snapshot.event_seq == seq)).all()
        named += [(f"snapshot/{t}", h) for t, h in snaps]
        sizes = dict(conn.execute(select(Blob.hash, Blob.size).where(Blob.hash.in_([h for _, h in named]))).all())
    rows = []
    for name, h in named:
        data = bytes(store.blobs.get(h)[:4])
        rows.append({"name": name, "bytes": int(sizes[h]), "new": h not in before,
                     "format": data.decode("ascii", "replace") if name != "manifest" else "json"})
    return rows


def all_hashes(exp: Experiment) -> set[str]:
    with exp.store.engine.connect() as conn:
        return set(conn.scalars(select(Blob.hash)))


_ENCODINGS = snap_mod._encodings


def use_format(compact: bool) -> None:
    """The compact encoding (WLC1 blobs, per-column Parquet encodings) or the one before it (WLT1, Parquet's
    defaults), for the dumps that follow."""
    ckpt_mod.COMPACT_DATA = compact
    snap_mod._encodings = _ENCODINGS if compact else lambda table: {}


def measure(n: int, compact: bool) -> dict[str, Any]:
    use_format(compact)
    with tempfile.TemporaryDirectory() as store:
        exp = build(n, store)
        t = time.perf_counter()
        exp.train_n_steps(n // BATCH)  # every full batch of the epoch: the sampler is still in it (its order kept)
        exp.flush()
        train_s = time.perf_counter() - t
        before = all_hashes(exp)
        t = time.perf_counter()
        cid = exp.dump()
        dump_s = time.perf_counter() - t
        t = time.perf_counter()
        exp.load(checkpoint_id=cid)
        load_s = time.perf_counter() - t
        rows = breakdown(exp, before, cid)
        exp.close()
        exp.store.close()
    written = sum(r["bytes"] for r in rows if r["new"])
    return {"compact": compact, "samples": n, "train_s": train_s, "dump_s": dump_s, "load_s": load_s,
            "blobs": rows, "written": written, "per_sample": written / (n + EVAL)}


def show(result: dict[str, Any]) -> None:
    label = "compact (WLC1)" if result["compact"] else "legacy (WLT1)"
    print(f"\n{label}: {result['samples']:,} train + {EVAL} eval samples; one epoch in {result['train_s']:.1f} s; "
          f"dump {result['dump_s']:.2f} s, load {result['load_s']:.2f} s")
    print(f"  {'blob':<44}{'format':<8}{'bytes':>12}{'B/sample':>10}  written")
    for r in sorted(result["blobs"], key=lambda r: -r["bytes"]):
        if r["bytes"] >= 1024 or r["new"]:
            print(f"  {r['name']:<44}{r['format']:<8}{r['bytes']:>12,}{r['bytes'] / (result['samples'] + EVAL):>10.3f}"
                  f"  {'yes' if r['new'] else 'no (already stored)'}")
    print(f"  {'written by the dump':<52}{result['written']:>12,}{result['per_sample']:>10.3f}")


def compare(n: int, reps: int) -> dict[str, Any]:
    """Dump + load time, legacy vs compact encoding, alternated ABBA on one experiment."""
    with tempfile.TemporaryDirectory() as store:
        exp = build(n, store)
        exp.train_n_steps(n // BATCH)
        exp.flush()  # the epoch's statistics rows reach SQL before the timed rounds

        def once(compact: bool) -> float:
            use_format(compact)
            exp.train_n_steps(1)  # a new state: every per-sample column changes
            exp.flush()
            t = time.perf_counter()
            exp.load(checkpoint_id=exp.dump())
            return time.perf_counter() - t

        once(True), once(False)  # warm both
        legacy, compact, ratios = [], [], []
        for i in range(reps):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {c: once(c) for c in order}
            legacy.append(got[False])
            compact.append(got[True])
            ratios.append(got[True] / got[False])
        exp.close()
        exp.store.close()
    use_format(True)
    out = {"legacy_s": legacy, "compact_s": compact, "ratio_median": statistics.median(ratios), "ratios": ratios}
    print(f"\ndump+load at {n:,}: legacy median {statistics.median(legacy):.2f} s, compact median "
          f"{statistics.median(compact):.2f} s; compact/legacy {out['ratio_median']:.3f} "
          f"(median of {reps} ABBA pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--legacy", action="store_true", help="also list the legacy encoding's blobs")
    ap.add_argument("--compare", action="store_true", help="time dump+load, legacy vs compact (ABBA)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timing-only", action="store_true", help="with --compare: skip the blob listing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"load {Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else '?'}")
    results: dict[str, Any] = {}
    if args.legacy:
        results["legacy"] = measure(args.samples, compact=False)
        show(results["legacy"])
    if not args.timing_only:
        results["compact"] = measure(args.samples, compact=True)
        show(results["compact"])
    if args.compare:
        results["timing"] = compare(args.samples, args.reps)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
