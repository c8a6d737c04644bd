"""Benchmark: bulk upsert of ``sample_stats`` rows on SQLite and PostgreSQL.

Prints rows/s for insert (new rows) and update (existing rows) at several
sizes, and the time of a top-100-by-loss query. Target (issue #2): at least
200,000 rows/s upserted on SQLite.

    python tools/bench_store.py [--sizes 10000 60000 100000] [--pg URL] [--json out.json]

``--pg-compare`` instead measures PostgreSQL before and after revision 0006
(issue #26): the write before it (text ``COPY`` of Python rows, a table at the
default fill factor) against today's (binary ``COPY`` encoded by numpy, a table
at fill factor 40), alternated in ABBA order, in wall time and in CPU time
(this process plus its server backend, read from /proc: meaningful on a loaded
machine); then the table's size after 1 and 3 epochs of rewriting every row,
against the same rows packed in a fresh table, with no VACUUM.

    python tools/bench_store.py --pg-compare [--sizes 10000 100000 1000000] [--reps 3] [--epochs-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
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


def creation_columns(n: int) -> dict[str, np.ndarray]:
    """The rows an experiment starts with (SPEC §6): never seen, so age, loss, prediction and label are null."""
    nan = np.full(n, np.nan)
    return dict(sample_id=np.arange(n), prediction_age=nan, prediction_loss=nan, exposure_amount=np.zeros(n, int),
                deny_listed=np.zeros(n, bool), prediction=nan, label=nan)


# -- PostgreSQL before and after revision 0006 (issue #26) ---------------------------------------------------

def legacy_pg_upsert(conn: Any, experiment_id: int, split: str, cols: Mapping[str, Any]) -> int:
    """The PostgreSQL write before revision 0006, kept as the baseline: the columns as Python lists, zipped into
    row tuples, text ``COPY`` row by row into a temporary copy of ``sample_stats``, one ``ON CONFLICT`` merge."""
    from weightslab.history import stats

    n = len(cols["sample_id"])
    values = [stats._column(cols[c], *stats._SAMPLE_KINDS[c]) for c in stats.SAMPLE_COLUMNS]
    rows = list(zip([experiment_id] * n, [split] * n, *values))
    names = ("experiment_id", "split", *stats.SAMPLE_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in stats.SAMPLE_COLUMNS if c != "sample_id")
    driver = conn.connection.driver_connection
    with driver.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS wl_tmp_sample_stats (LIKE sample_stats INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY wl_tmp_sample_stats ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(f"INSERT INTO sample_stats ({', '.join(names)}) SELECT {', '.join(names)} "  # noqa: S608 - constants only
                    f"FROM wl_tmp_sample_stats ON CONFLICT (experiment_id, split, sample_id) DO UPDATE SET {updates}")
        cur.execute("TRUNCATE wl_tmp_sample_stats")
    return n


@contextmanager
def pg_schema_store(url: str, *, before: bool = False) -> Iterator[Store]:
    """A store in a fresh PostgreSQL schema (dropped afterwards); ``before``: its ``sample_stats`` at the
    default fill factor, as before revision 0006."""
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    info = dict(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, autocommit=True)
    schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**info) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        with Store.open(f"{url}?options={quote('-csearch_path=' + schema)}") as s:
            if before:
                with s.engine.begin() as conn:
                    conn.execute(text("ALTER TABLE sample_stats RESET (fillfactor)"))
            yield s
    finally:
        with psycopg.connect(**info) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (the server's backend runs on this machine)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Writer = Callable[[Any, int, str, Mapping[str, Any]], int]


def timed_write(store: Store, experiment_id: int, cols: Mapping[str, Any], writer: Writer) -> tuple[float, float]:
    """Write one split's rows in one transaction: (wall seconds, CPU seconds of this process and its backend)."""
    from sqlalchemy import text

    with store.transaction() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        wall, cpu, server = time.perf_counter(), time.process_time(), _cpu_seconds(pid)
        writer(conn, experiment_id, "train", cols)
    return time.perf_counter() - wall, time.process_time() - cpu + _cpu_seconds(pid) - server


def table_size(store: Store) -> dict[str, int]:
    """``sample_stats``'s size on disk (heap + index + TOAST) and the counters of its row versions, and the size
    of the same live rows packed in a fresh table (default fill factor, with its key): 'the live data'."""
    from sqlalchemy import text

    with store.engine.begin() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        total = conn.execute(text("SELECT pg_total_relation_size('sample_stats')")).scalar_one()
        row = conn.execute(text("SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                "WHERE relid = 'sample_stats'::regclass")).one()
        conn.execute(text("CREATE TEMP TABLE wl_packed ON COMMIT DROP AS SELECT * FROM sample_stats"))
        conn.execute(text("ALTER TABLE wl_packed ADD PRIMARY KEY (experiment_id, split, sample_id)"))
        live = conn.execute(text("SELECT pg_total_relation_size('wl_packed')")).scalar_one()
    return {"bytes": int(total), "live_bytes": int(live), "n_live_tup": row[0], "n_dead_tup": row[1],
            "n_tup_upd": row[2], "n_tup_hot_upd": row[3]}


def pg_epochs(store: Store, n: int, epochs: int, writer: Writer, report: tuple[int, ...] = (1, 3)) -> list[dict]:
    """Create an experiment's ``n`` rows (nulls), rewrite every row ``epochs`` times, never VACUUM; the table's
    size after the epochs in ``report``."""
    exp = store.create_experiment(f"epochs-{uuid.uuid4().hex[:6]}").experiment_id
    timed_write(store, exp, creation_columns(n), writer)
    out = []
    for epoch in range(1, epochs + 1):
        timed_write(store, exp, columns(n, epoch), writer)
        if epoch in report:
            time.sleep(0.6)  # statistics counters are flushed at most once a second (PostgreSQL 15)
            out.append({"rows": n, "epochs": epoch, **table_size(store)})
    return out


def pg_compare(url: str, sizes: list[int], reps: int, epoch_rows: int) -> dict[str, Any]:
    """Before vs after revision 0006 on PostgreSQL: update rates (ABBA pairs) and table sizes (see module doc)."""
    from weightslab.history.stats import upsert_sample_stats

    sides: dict[str, Writer] = {"before": legacy_pg_upsert, "after": upsert_sample_stats}
    rates, sizes_out = [], {}
    with pg_schema_store(url, before=True) as old, pg_schema_store(url) as new:
        stores = {"before": old, "after": new}
        for n in sizes:
            runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for r in range(reps):
                for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    s = stores[side]
                    exp = s.create_experiment(f"rate-{n}-{uuid.uuid4().hex[:6]}").experiment_id
                    timed_write(s, exp, creation_columns(n), sides[side])
                    runs[side].append(timed_write(s, exp, columns(n, 1), sides[side]))
            wall = statistics.median(a[0] / b[0] for a, b in zip(runs["before"], runs["after"]))
            cpu = statistics.median(a[1] / b[1] for a, b in zip(runs["before"], runs["after"]))
            rates.append({"rows": n, "pairs": reps, "load": os.getloadavg()[0],
                          **{f"{side}_rows_per_s": n / statistics.median(w for w, _ in runs[side]) for side in runs},
                          **{f"{side}_rows_per_cpu_s": n / statistics.median(c for _, c in runs[side]) for side in runs},
                          "speedup_wall": wall, "speedup_cpu": cpu})
    for side in ("before", "after"):
        with pg_schema_store(url, before=side == "before") as s:
            sizes_out[side] = pg_epochs(s, epoch_rows, 3, sides[side])
    return {"rates": rates, "sizes": sizes_out}


def print_compare(result: dict[str, Any]) -> None:
    print(f"{'rows':>9}{'pairs':>6}{'before rows/s':>15}{'after rows/s':>14}{'x wall':>8}"
          f"{'before rows/cpu-s':>19}{'after rows/cpu-s':>18}{'x cpu':>7}{'load':>6}")
    for r in result["rates"]:
        print(f"{r['rows']:>9}{r['pairs']:>6}{r['before_rows_per_s']:>15,.0f}{r['after_rows_per_s']:>14,.0f}"
              f"{r['speedup_wall']:>8.2f}{r['before_rows_per_cpu_s']:>19,.0f}{r['after_rows_per_cpu_s']:>18,.0f}"
              f"{r['speedup_cpu']:>7.2f}{r['load']:>6.1f}")
    print(f"{'side':<8}{'rows':>9}{'epochs':>7}{'size MB':>9}{'live MB':>9}{'ratio':>7}{'dead rows':>11}{'HOT %':>7}")
    for side, rows in result["sizes"].items():
        for r in rows:
            hot = 100 * r["n_tup_hot_upd"] / max(r["n_tup_upd"], 1)
            print(f"{side:<8}{r['rows']:>9}{r['epochs']:>7}{r['bytes'] / 1e6:>9.0f}{r['live_bytes'] / 1e6:>9.0f}"
                  f"{r['bytes'] / r['live_bytes']:>7.2f}{r['n_dead_tup']:>11,}{hot:>7.0f}")


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
    ap.add_argument("--pg-compare", action="store_true", help="PostgreSQL before vs after revision 0006 (see above)")
    ap.add_argument("--epoch-rows", type=int, default=1_000_000, help="rows of the table-size run (--pg-compare)")
    args = ap.parse_args()
    if args.pg_compare:
        result = pg_compare(args.pg, args.sizes, args.reps, args.epoch_rows)
        print_compare(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return
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
