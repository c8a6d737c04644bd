"""Benchmark: what outside requests cost a running experiment (docs/requests.md).

Prints, on SQLite and PostgreSQL:

- the safe point's probe (``Store.next_request``: one indexed query), in µs, with an empty queue and with
  1,000 finished requests in the table; this is all a quiet safe point costs;
- a one-batch ``train_n_steps(1)`` call with ``accept_requests`` on and off (alternated), for scale;
- filing a request (what ``weightslab request`` does once the store is open), and applying it
  (claim, the API call, its event and "applied" in one transaction) against the same API call made directly.

    python tools/bench_requests.py [--reps 300] [--pg URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

import torch
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel, digits_datasets
from weightslab.history.store import Store


def _us(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def bench(target: str, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    train_ds, eval_ds = digits_datasets()
    with tempfile.TemporaryDirectory() as tb:
        on = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                        eval_dataset=eval_ds, learning_rate=1e-2, batch_size=64, name="on", store=target,
                        tensorboard_dir=tb, progress=False)
        off = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                         eval_dataset=eval_ds, learning_rate=1e-2, batch_size=64, name="off", store=target,
                         tensorboard_dir=tb, progress=False, accept_requests=False)
        outside = Store.open(target)
        out: dict[str, float] = {"probe_empty_us": _us(lambda: outside.next_request(on.experiment_id), reps)}
        for _ in range(1000):
            r = outside.file_request("on", "set_neuron_lr", {"layer_index": 1, "neuron_indices": [0], "lr": 1.0})
            outside.cancel_request(r.request_id)
        out["probe_1000_finished_us"] = _us(lambda: outside.next_request(on.experiment_id), reps)
        steps_on, steps_off = [], []
        for i in range(40):  # alternated, so that drift hits both sides alike
            for exp, times in ((on, steps_on), (off, steps_off)) if i % 2 else ((off, steps_off), (on, steps_on)):
                t = time.perf_counter()
                exp.train_n_steps(1)
                times.append(time.perf_counter() - t)
        out["train_step_accepting_ms"] = statistics.median(steps_on) * 1e3
        out["train_step_not_accepting_ms"] = statistics.median(steps_off) * 1e3
        filing, applying, direct = [], [], []
        for i in range(30):
            t = time.perf_counter()
            outside.file_request("on", "set_neuron_lr", {"layer_index": 1, "neuron_indices": [i % 4], "lr": 0.5})
            filing.append(time.perf_counter() - t)
            t = time.perf_counter()
            on.apply_requests()
            applying.append(time.perf_counter() - t)
            t = time.perf_counter()
            on.model.layers[1].set_per_neuron_learning_rate({i % 4}, lr=0.5)
            direct.append(time.perf_counter() - t)
        out["file_request_ms"] = statistics.median(filing) * 1e3
        out["apply_request_ms"] = statistics.median(applying) * 1e3
        out["same_call_direct_ms"] = statistics.median(direct) * 1e3
        for exp in (on, off):
            exp.close()
        outside.close()
        on.store.close()
        off.store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL URL ('' to skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        results["sqlite"] = bench(d + "/store", args.reps)
    if args.pg:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(args.pg)
        schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
        info = dict(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database)
        with psycopg.connect(**info, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        try:
            results["postgresql"] = bench(f"{args.pg}?options={quote(f'-csearch_path={schema}')}", args.reps)
        finally:
            with psycopg.connect(**info, autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for backend, figures in results.items():
        print(backend)
        for key, value in figures.items():
            print(f"  {key:30s} {value:10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
