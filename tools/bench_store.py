"""Benchmark: bulk upsert of ``sample_stats`` rows on SQLite and PostgreSQL.

Prints rows/s for insert (new rows) and update (existing rows) at several
sizes, and the time of a top-100-by-loss query. Target (issue #2): at least
200,000 rows/s upserted on SQLite.

    python tools/bench_store.py [--sizes 10000 60000 100000] [--pg URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from urllib.parse import quote

import numpy as np

from weightslab.history.stats import upsert_sample_stats
from weightslab.history.store import Store


def columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return dict(sample_id=np.arange(n), prediction_age=rng.integers(0, 10**7, n).astype(float),
                prediction_loss=rng.random(n), exposure_amount=rng.integers(0, 9, n),
                deny_listed=rng.random(n) < 0.05, prediction=rng.integers(0, 10, n).astype(float),
                label=rng.integers(0, 10, n))


def bench(store: Store, n: int, reps: int) -> dict[str, float]:
    ins, upd = [], []
    for r in range(reps):
        exp = store.create_experiment(f"bench-{n}-{r}-{uuid.uuid4().hex[:6]}").experiment_id
        for out, seed in ((ins, 0), (upd, 1)):
            cols = columns(n, seed)
            t = time.perf_counter()
            with store.transaction() as conn:
                upsert_sample_stats(conn, exp, "train", cols)
            out.append(n / (time.perf_counter() - t))
    q = []
    for _ in range(5):
        t = time.perf_counter()
        store.query("SELECT sample_id, prediction_loss FROM sample_stats WHERE experiment_id = :e "
                    "AND split = 'train' ORDER BY prediction_loss DESC LIMIT 100", {"e": exp})
        q.append((time.perf_counter() - t) * 1000)
    return {"rows": n, "insert_rows_per_s": statistics.median(ins), "update_rows_per_s": statistics.median(upd),
            "top100_ms": statistics.median(q)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 100_000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL URL ('' to skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d, Store.open(d) as s:
        for n in args.sizes:
            results.append({"backend": "sqlite", **bench(s, n, args.reps)})
    if args.pg:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(args.pg)
        schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
        info = dict(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database)
        with psycopg.connect(**info, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        try:
            with Store.open(f"{args.pg}?options={quote('-csearch_path=' + schema)}") as s:
                for n in args.sizes:
                    results.append({"backend": "postgresql", **bench(s, n, args.reps)})
        finally:
            with psycopg.connect(**info, autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')
    print(f"{'backend':<11}{'rows':>9}{'insert rows/s':>15}{'update rows/s':>15}{'top-100 ms':>12}")
    for r in results:
        print(f"{r['backend']:<11}{r['rows']:>9}{r['insert_rows_per_s']:>15,.0f}{r['update_rows_per_s']:>15,.0f}"
              f"{r['top100_ms']:>12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
