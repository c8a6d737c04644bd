"""``weightslab replay``: :func:`weightslab.experiment.replica.replica` and ``replay_to`` (imports torch)."""

from __future__ import annotations

import argparse
from typing import Any

from weightslab.cli.options import add_format, command
from weightslab.errors import ConfigurationError


def register(sub: Any) -> None:
    p = command(sub, "replay", "rebuild an experiment's state at a seq and verify every recorded fingerprint",
                "Restores the nearest recorded state at or before the seq (creation or checkpoint), then "
                "re-executes the later events (training re-run deterministically) and checks each event's "
                "state fingerprint; on divergence, names the first diverging seq and which part of the state "
                "(model, optim, ledger, sampler, rng) differs. The model and data come from the recipe the "
                "experiment recorded (Experiment(..., recipe='package.module:function')) or --recipe. "
                "Nothing is written to the store.",
                ["weightslab replay digits-demo-20261126-120000",
                 "weightslab replay x0 --to 42 --from-start --recipe mypkg.recipes:mnist --json",
                 "weightslab replay ddp-run --nproc 2   # a run recorded with torchrun on 2 processes"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--to", type=int, default=None, metavar="SEQ", help="event seq to rebuild (default: the last)")
    p.add_argument("--from-start", action="store_true", help="replay from the creation, not the nearest checkpoint")
    p.add_argument("--recipe", default=None, help="'package.module:function' returning (model, train, eval)")
    p.add_argument("--device", default="cpu", help="device to replay on (bit-exactness is promised on CPU)")
    p.add_argument("--force", action="store_true",
                   help="replay events recorded with another torch version or device (which cannot be pinned)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="replay on N local processes (torch.distributed, gloo): a run recorded with N ranks "
                        "replays only on as many")
    add_format(p, "text", "json")
    p.set_defaults(func=run)


def _argv(args: argparse.Namespace) -> list[str]:
    """This command line, for the ranks it launches."""
    out = ["-m", "weightslab.cli", "replay", args.name, "--device", args.device, "--format", args.format]
    for flag, value in (("--store", args.store), ("--to", args.to), ("--recipe", args.recipe)):
        if value is not None:
            out += [flag, str(value)]
    return out + [flag for flag, on in (("--from-start", args.from_start), ("--force", args.force)) if on]


def _world_size_problem(store: Any, args: argparse.Namespace, here: int) -> str | None:
    """Why this process (group) cannot replay the experiment: it was recorded with another world size."""
    from weightslab.experiment.distributed import recorded_world_size
    from weightslab.history.log import walk

    log = walk(store, store.get_experiment(args.name), strict=False)
    size, backend = recorded_world_size([e.environment for e in log.entries])
    if size == here:
        return None
    store_opt = f" --store {args.store}" if args.store else ""
    how = (f"weightslab replay {args.name}{store_opt} --nproc {size}" if size > 1
           else f"weightslab replay {args.name}{store_opt}")
    return (f"experiment {args.name!r} was recorded on {size} process{'es' if size > 1 else ''}"
            f"{f' (torch.distributed, {backend})' if size > 1 else ''}, and this replay runs on {here}: its training "
            f"re-executes bit-exactly only on as many. Run: {how}")


def run(args: argparse.Namespace) -> int:
    import time

    import torch.distributed as dist

    from weightslab.cli.output import print_json
    from weightslab.experiment.distributed import initialise_from_environment, launch
    from weightslab.experiment.replica import replay_to, replica
    from weightslab.history.store import Store

    if args.nproc is not None and args.nproc < 1:
        raise ConfigurationError(f"--nproc must be at least 1, got {args.nproc}")
    in_group = initialise_from_environment(args.device)  # a rank this command launched, or torchrun's
    if args.nproc is not None and args.nproc > 1 and not in_group:
        with Store.open(args.store, create=False, read_only=True) as store:
            problem = _world_size_problem(store, args, args.nproc)
        if problem is not None:
            raise ConfigurationError(problem)
        return launch(_argv(args), args.nproc)
    here = dist.get_world_size() if in_group else 1
    rank = dist.get_rank() if in_group else 0
    with Store.open(args.store, create=False, read_only=True) as store:
        problem = _world_size_problem(store, args, here)
        if problem is not None:
            raise ConfigurationError(problem)
        exp = replica(store, args.name, recipe=args.recipe, device=args.device, force=args.force)
        started = time.perf_counter()
        outcome = replay_to(exp, args.to, from_start=args.from_start)
        elapsed = time.perf_counter() - started
        exp.close()
    if in_group:
        dist.destroy_process_group()
    if rank > 0:  # rank 0 reports for every rank
        return 0 if outcome.ok else 1
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
