"""How fast the UI's pages render on the server, on a large store.

Builds (or reuses) a store with one experiment of 10^4 events (training and
evaluation calls, edits, deny/allow, five checkpoints in three branches) and
10^6 ``sample_stats`` rows, then requests every page through the ASGI app
in-process (Starlette's TestClient: server time only, no network, no browser)
and prints per page the time of the first request after the server started
(cold: nothing cached, no walked log, no diff), then, once the background work
those started is done (an audit, the checkpoints' diffs), the median and worst
time of the same request again (warm; a count or histogram is kept 5 s, so two
pages also ask with a new filter each time). Target (issue #24): every page ≤ 300 ms.
A benchmark, not a test: the figures go to docs/ui.md.

    python tools/bench_ui.py [--store DIR_OR_URL] [--events 10000] [--samples 1000000] [--repeat 5]

The store is written with the Store API (typed event payloads, real manifests and
snapshots), not by training: a real run of 10^4 events would take hours here.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    DomainEvent,
    Evaluated,
    ExperimentCreated,
    NeuronsAdded,
    NeuronsPruned,
    SamplesAllowed,
    SamplesDenied,
    StepsTrained,
)
from weightslab.history.checkpoints import CheckpointRow
from weightslab.history.manifest import encode_manifest, state_hash
from weightslab.history.store import Store
from weightslab.history.tensorcodec import encode_array

NAME = "bench"
BATCH = 64
CODE_VERSION = "weightslab 0.1.0 (bench_ui)"


def _hex(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class _Builder:
    """Appends typed events to one experiment in one transaction per batch of events."""

    def __init__(self, store: Store, name: str, widths: list[int], train_n: int, eval_n: int) -> None:
        self.store, self.widths = store, list(widths)
        self.train_n, self.eval_n = train_n, eval_n
        self.exp = store.create_experiment(name, config={"config": {"learning_rate": 0.01, "batch_size": BATCH},
                                                         "optimizer_class": "torch.optim.adam.Adam",
                                                         "train_size": train_n, "eval_size": eval_n})
        self.seq, self.age = 0, 0
        self.rng = np.random.default_rng(0)
        self.checkpoints: dict[int, tuple[str, int, list[int]]] = {}  # id -> (manifest, age, widths)
        self.head: int | None = None

    def append(self, conn: Any, event: DomainEvent, digest: str | None = None) -> int:
        state = {"model": _hex("m", self.seq), "ledger": _hex("l", self.seq)}
        payload = {**event.to_payload(), "state": state}
        row = self.store.append_event(self.exp.experiment_id, event.kind, payload, expected_last_seq=self.seq,
                                      conn=conn, state_hash=digest or _hex("s", self.seq), code_version=CODE_VERSION)
        self.seq = row.seq
        return row.seq

    def manifest(self, conn: Any) -> tuple[str, str]:
        arrays = {f"model/layer{i}.weight": self.rng.standard_normal((w, 4)).astype(np.float32)
                  for i, w in enumerate(self.widths)}
        names = sorted(arrays)
        hashes = dict(zip(names, self.store.blobs.put_many(conn, [encode_array(arrays[n]) for n in names])))
        meta = {"architecture": list(self.widths), "model_age": self.age}
        (digest,) = self.store.blobs.put_many(conn, [encode_manifest(hashes, meta)])
        return digest, state_hash(hashes)

    def neuron_rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for layer, width in enumerate(self.widths):
            for split in ("train", "eval"):
                seen = max(self.age, 1)
                rates = self.rng.random(width) * (layer < len(self.widths) - 1)
                rows += [(layer, n, split, f"layer{layer}", int(r * seen), seen) for n, r in enumerate(rates)]
        return rows

    def create(self) -> None:
        with self.store.transaction() as conn:
            manifest, digest = self.manifest(conn)
            self.append(conn, ExperimentCreated(name=self.exp.name, initial=manifest, train_size=self.train_n,
                                                eval_size=self.eval_n), digest)

    def train_and_eval(self, conn: Any, k: int) -> None:
        steps = 4
        before, self.age = self.age, self.age + steps * BATCH
        loss = float(2.3 * np.exp(-self.age / 2e5) + 0.05 * self.rng.random())
        self.append(conn, StepsTrained(steps=steps, batch_size=BATCH, samples=steps * BATCH, age_before=before,
                                       age_after=self.age, loss=loss, accuracy=1 - loss / 2.5))
        if k % 4 == 3:
            self.append(conn, Evaluated(full=True, samples=self.eval_n, loss=loss * 1.1,
                                        accuracy=1 - loss * 1.1 / 2.5, model_age=self.age))

    def edit(self, conn: Any, k: int) -> None:
        layer = k % (len(self.widths) - 1)
        if k % 2:
            self.widths[layer] += 2
            self.append(conn, NeuronsAdded(layer_index=layer, neuron_count=2, widths=tuple(self.widths)))
        else:
            self.widths[layer] -= 1
            self.append(conn, NeuronsPruned(layer_index=layer, neuron_indices=(0,), widths=tuple(self.widths)))
        ids = tuple(int(i) for i in self.rng.choice(self.train_n, 5, replace=False))
        kind = SamplesDenied if k % 3 else SamplesAllowed
        self.append(conn, kind(split="train", ids=ids, mode="ids", changed=5))

    def dump(self) -> int:
        cid, parent = len(self.checkpoints), self.head
        with self.store.transaction() as conn:
            manifest, digest = self.manifest(conn)
            seq = self.append(conn, CheckpointDumped(checkpoint_id=cid, parent_id=parent, manifest=manifest,
                                                     model_age=self.age, architecture=tuple(self.widths)), digest)
            self.store.add_checkpoint(conn, self.exp.experiment_id,
                                      CheckpointRow(cid, parent, seq, manifest, self.age))
            frame = pd.DataFrame(self.neuron_rows(), columns=["layer_index", "neuron_index", "split", "layer_name",
                                                              "trigger_count", "seen_samples"])
            self.store.write_snapshot(self.exp.experiment_id, "neuron_stats", seq, frame, conn=conn)
        self.checkpoints[cid] = (manifest, self.age, list(self.widths))
        self.head = cid
        return cid

    def load(self, cid: int) -> None:
        manifest, self.age, widths = self.checkpoints[cid]
        self.head = cid
        self.widths = list(widths)
        with self.store.transaction() as conn:
            self.append(conn, CheckpointLoaded(checkpoint_id=cid, manifest=manifest))


def build_store(target: str, *, events: int = 10_000, samples: int = 1_000_000, name: str = NAME,
                widths: tuple[int, ...] = (8, 16, 32, 10)) -> int:
    """Write experiment ``name`` with about ``events`` events and ``samples`` sample rows; returns its id.

    The log: training calls (an evaluation every 4th), an edit and a deny or allow every 250 training
    calls; checkpoints 0 and 1 in a row, then checkpoint 0 loaded and checkpoints 2 and 3 on that
    branch, then checkpoint 1 loaded and checkpoint 4. 90 % of the samples are training samples.
    """
    store = Store.open(target)
    try:
        train_n = samples - samples // 10
        b = _Builder(store, name, list(widths), train_n, samples - train_n)
        b.create()
        k = 0
        for fraction, then in ((0.2, "dump"), (0.4, "dump"), (0.4, 0), (0.6, "dump"), (0.75, "dump"), (0.75, 1),
                               (1.0, "dump")):
            with store.transaction() as conn:
                while b.seq < fraction * events - 2:
                    b.train_and_eval(conn, k)
                    if k % 250 == 249:
                        b.edit(conn, k // 250)
                    k += 1
            if then == "dump":
                b.dump()
            else:
                b.load(int(then))
        _write_statistics(store, b, train_n, samples - train_n)
        return b.exp.experiment_id
    finally:
        store.close()


def _write_statistics(store: Store, b: _Builder, train_n: int, eval_n: int) -> None:
    rng = np.random.default_rng(1)
    jobs = []
    for split, n in (("train", train_n), ("eval", eval_n)):
        seen = rng.random(n) < 0.98
        loss = np.where(seen, rng.gamma(0.6, 0.5, n), np.nan)
        labels = rng.integers(0, 10, n).astype(np.float64)
        jobs.append((split, {
            "sample_id": np.arange(n, dtype=np.int64),
            "prediction_age": np.where(seen, rng.integers(0, max(b.age, 1), n), np.nan),
            "prediction_loss": loss, "exposure_amount": np.where(seen, rng.integers(1, 9, n), 0),
            "deny_listed": (rng.random(n) < 0.02) if split == "train" else np.zeros(n, dtype=bool),
            "prediction": np.where(seen, np.where(rng.random(n) < 0.9, labels, (labels + 1) % 10), np.nan),
            "label": labels}))
    store.write_sample_rows(b.exp.experiment_id, jobs)
    with store.transaction() as conn:
        store.write_neuron_rows(conn, b.exp.experiment_id, b.neuron_rows())
    if store.location.backend != "sqlite":  # what autovacuum does a while after a bulk load: planner statistics
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


def pages(experiment_id: int) -> dict[str, str]:
    """Every page (and fragment a page loads) of the UI, by name."""
    e = f"/experiments/{experiment_id}"
    return {
        "experiments": "/",
        "experiment": e,
        "curves (fragment)": f"{e}/curves",
        "lineage (fragment)": f"{e}/lineage",
        "diff of a checkpoint": f"{e}/checkpoints/3/diff",
        "timeline (fragment)": f"{e}/events",
        "timeline filtered by kind": f"{e}/events?kind=prune&kind=deny",
        "neurons": f"{e}/neurons",
        "samples": f"{e}/samples",
        "samples by loss, desc": f"{e}/samples?sort=prediction_loss&order=desc",
        "samples filtered": f"{e}/samples?where=prediction_loss+%3E+1.5+and+label+in+%5B1%2C+2%5D",
        "samples, next page by loss": f"{e}/samples?sort=prediction_loss&order=desc&after=1.9:123",
        "loss histogram (fragment)": f"{e}/samples/histogram",
        "samples, a new filter each time": f"{e}/samples?where=prediction_loss+%3E+0.{{i}}",
        "histogram, a new filter each time": f"{e}/samples/histogram?where=prediction_loss+%3E+0.{{i}}",
        "compare two runs": f"/compare?id={experiment_id}",
        "poll for new events": f"{e}/poll?seq=1",
    }


def measure(target: str, experiment_id: int, repeat: int) -> list[dict[str, Any]]:
    from starlette.testclient import TestClient

    from weightslab.ui.app import create_app

    results = []
    with TestClient(create_app(target, warm=False), base_url="http://127.0.0.1") as client:
        cold = {url: _timed(client, url) for url in pages(experiment_id).values()}
        _settle(client.app.state.ui, experiment_id)  # the audit and diffs the experiment page started
        for page, url in pages(experiment_id).items():
            times = []
            for i in range(repeat):
                ms, size = _timed(client, url.replace("{i}", str(i + 2)))
                times.append(ms)
            results.append({"page": page, "url": url, "cold_ms": cold[url][0], "median_ms": statistics.median(times),
                            "max_ms": max(times), "bytes": size})
    return results


def _timed(client: Any, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    response = client.get(url.replace("{i}", "1"))
    ms = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}\n{response.text[:2000]}")
    return ms, len(response.content)


def _settle(ui: Any, experiment_id: int) -> None:
    """Wait until the background work of the cold requests is done (an audit of 10^4 events takes seconds)."""
    row = ui.experiment(experiment_id)
    ui.background.submit(lambda: None).result()
    while ui.audits.report(experiment_id, row.name, ui.logs.head(experiment_id)) is None:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="store to build into or reuse (default: a temporary directory)")
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="warm requests per page")
    args = ap.parse_args(argv)
    target = args.store or str(Path(tempfile.mkdtemp(prefix="wl-bench-ui-")) / "store")
    with Store.open(target) as store:
        found = store.find_experiment(NAME)
    if found is None:
        t0 = time.perf_counter()
        experiment_id = build_store(target, events=args.events, samples=args.samples)
        print(f"built {target}: {args.events} events, {args.samples} samples in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    else:
        experiment_id = found.experiment_id
    results = measure(target, experiment_id, args.repeat)
    print(f"{'page':<30} {'cold ms':>8} {'median ms':>10} {'max ms':>8} {'KiB':>7}")
    for r in results:
        print(f"{r['page']:<30} {r['cold_ms']:8.0f} {r['median_ms']:10.0f} {r['max_ms']:8.0f} {r['bytes'] / 1024:7.0f}")
    worst = max(r["max_ms"] for r in results)
    print(f"worst warm request: {worst:.0f} ms (target ≤ 300 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
