"""``weightslab export``: :func:`weightslab.history.export.export_experiment`."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import command


def register(sub: Any) -> None:
    p = command(sub, "export", "write an experiment's events, statistics and sample history as Parquet",
                "Writes events.parquet, sample_stats.parquet, neuron_stats.parquet and "
                "sample_history.parquet (all sample_history snapshots, concatenated) into OUTDIR, "
                "created if needed.",
                ["weightslab export x0 ./x0-export"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("outdir", metavar="OUTDIR", help="directory to write the Parquet files to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weightslab.history.export import export_experiment
    from weightslab.history.store import Store

    with Store.open(args.store, create=False, read_only=True) as store:
        files = export_experiment(store, args.name, args.outdir)
    for f in files:
        print(f"wrote {f.path} ({f.rows} rows)")
    return 0
