"""``weightslab replay``: :func:`weightslab.experiment.replica.replica` and ``replay_to`` (imports torch)."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command


def register(sub: Any) -> None:
    p = command(sub, "replay", "rebuild an experiment's state at a seq and verify every recorded fingerprint",
                "Restores the nearest recorded state at or before the seq (creation or checkpoint), then "
                "re-executes the later events (training re-run deterministically) and checks each event's "
                "state fingerprint; on divergence, names the first diverging seq and which part of the state "
                "(model, optim, ledger, sampler, rng) differs. The model and data come from the recipe the "
                "experiment recorded (Experiment(..., recipe='package.module:function')) or --recipe. "
                "Nothing is written to the store.",
                ["weightslab replay digits-demo-20261126-120000",
                 "weightslab replay x0 --to 42 --from-start --recipe mypkg.recipes:mnist --json"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--to", type=int, default=None, metavar="SEQ", help="event seq to rebuild (default: the last)")
    p.add_argument("--from-start", action="store_true", help="replay from the creation, not the nearest checkpoint")
    p.add_argument("--recipe", default=None, help="'package.module:function' returning (model, train, eval)")
    p.add_argument("--device", default="cpu", help="device to replay on (bit-exactness is promised on CPU)")
    p.add_argument("--force", action="store_true",
                   help="replay events recorded with another torch version or device (which cannot be pinned)")
    add_format(p, "text", "json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from weightslab.cli.output import print_json
    from weightslab.experiment.replica import replay_to, replica
    from weightslab.history.store import Store

    with Store.open(args.store, create=False, read_only=True) as store:
        exp = replica(store, args.name, recipe=args.recipe, device=args.device, force=args.force)
        started = time.perf_counter()
        outcome = replay_to(exp, args.to, from_start=args.from_start)
        elapsed = time.perf_counter() - started
        exp.close()
    result = {
        "experiment": args.name, "ok": outcome.ok, "base_seq": outcome.base_seq,
        "replayed": sorted({outcome.base_seq, *outcome.replayed}),
        "not_restored": outcome.not_restored, "seconds": round(elapsed, 3),
        "divergence": None if outcome.divergence is None else {
            "seq": outcome.divergence.seq, "kind": outcome.divergence.kind, "parts": outcome.divergence.parts},
        "error": outcome.error, "forced": outcome.forced, "noted": outcome.noted, "skipped": outcome.skipped,
    }
    if args.format == "json":
        print_json(result)
    elif outcome.ok:
        print(f"{args.name}: rebuilt the state at seq {outcome.reached} from seq {outcome.base_seq} "
              f"({len(result['replayed'])} events, {elapsed:.1f} s); every recorded fingerprint matches")
        if outcome.skipped:
            print(f"    not re-executed (own training loops, restored from the checkpoint after them): "
                  f"seqs {outcome.skipped}")
    else:
        why = outcome.divergence or outcome.error
        print(f"{args.name}: replay stopped at {why}; not restored: seqs {outcome.not_restored}")
    return 0 if outcome.ok else 1
