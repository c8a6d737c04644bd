"""``weightslab request``: :meth:`weightslab.history.store.Store.file_request` (and ``cancel_request``).

Files an edit for a running experiment; the process that holds it applies it at its
next safe point (``Experiment.apply_requests``; see docs/requests.md). One verb per
API call, named as a script calls it: ``prune``, ``add``, ``reinit``, ``lr``,
``freeze``, ``unfreeze``, ``deny``, ``allow``, ``set_hyperparameters``, ``dump``, ``load``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from weightslab.cli.options import EPILOG, add_format, command
from weightslab.errors import ConfigurationError
from weightslab.events.domain import EventKind

POLL_SECONDS = 0.2  # how often --wait looks at the request
_K = EventKind  # the verbs that are an event kind are spelled as one


def _ints(text: str) -> list[int]:
    """``0,3,5`` or ``0-4,7`` → [0, 3, 5] / [0, 1, 2, 3, 4, 7]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers such as 0,3,5 or 0-4") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one integer, e.g. 0,3")
    return out


# verb → (event kind, one-line help, example arguments)
_VERBS: dict[str, tuple[str, str, str]] = {
    _K.PRUNE: (EventKind.PRUNE, "remove neurons of a layer (and their coupled group)", "--layer 1 --neurons 0,3"),
    "add": (EventKind.ADD_NEURONS, "add neurons to a layer (function-preserving)", "--layer 0 --count 4"),
    "reinit": (EventKind.REINIT_NEURONS, "draw neurons' incoming weights again", "--layer 0 --neurons 5,6"),
    "lr": (EventKind.SET_NEURON_LR, "set neurons' learning-rate multiplier (--incoming: weight columns)",
           "--layer 0 --neurons 0-1 --lr 0"),
    _K.FREEZE: (EventKind.FREEZE, "freeze layers 0..I", "--up-to 1"),
    _K.UNFREEZE: (EventKind.UNFREEZE, "unfreeze layers I..end", "--from 1"),
    _K.DENY: (EventKind.DENY, "deny samples by id or by a query", "--where 'prediction_loss > 2'"),
    _K.ALLOW: (EventKind.ALLOW, "re-admit samples by id, by a query, or all", "--ids 3,7"),
    _K.SET_HYPERPARAMETERS: (EventKind.SET_HYPERPARAMETERS, "set hyper-parameters for the calls that follow",
                            "--learning-rate 1e-3"),
    _K.DUMP: (EventKind.DUMP, "save a checkpoint", ""),
    _K.LOAD: (EventKind.LOAD, "restore a checkpoint (the next dump branches from it)", "--checkpoint 0"),
}


def register(sub: Any) -> None:
    p = command(sub, "request", "ask a running experiment for an edit, applied at its next safe point",
                "The process that holds the experiment applies the request between its calls (or when it "
                "next opens the experiment) through the same API a script calls, records it as an ordinary "
                "event with you as its actor, or refuses it with the API's message, changing nothing. "
                "--wait blocks until then and prints the event's seq or the refusal (exit 1).",
                ["weightslab request x0 prune --layer 1 --neurons 0,3 --wait",
                 "weightslab request x0 deny --where 'prediction_loss > 2'",
                 "weightslab request x0 load --checkpoint 2", "weightslab request x0 --cancel 7"])
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--cancel", type=int, metavar="ID", help="cancel pending request ID instead")
    add_format(p, "text", "json")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=False)
    for verb, (_, summary, example) in _VERBS.items():
        v = verbs.add_parser(verb, help=summary, description=summary[0].upper() + summary[1:] + ".",
                             epilog=f"example:\n  weightslab request x0 {verb} {example}".rstrip() + "\n\n" + EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _arguments(verb, v)
        # Accepted after the verb too; SUPPRESS keeps what was given before it.
        v.add_argument("--store", default=argparse.SUPPRESS, help="store directory or URL")
        v.add_argument("--wait", action="store_true", default=argparse.SUPPRESS,
                       help="block until the request is applied or refused")
        v.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="S",
                       help="with --wait: give up after S seconds (exit 1; the request stays pending)")
        v.add_argument("--as", dest="requested_by", default=argparse.SUPPRESS, metavar="WHO",
                       help="who asks (default: user@host)")
        v.add_argument("--format", choices=("text", "json"), default=argparse.SUPPRESS)
        v.add_argument("--json", dest="format", action="store_const", const="json", default=argparse.SUPPRESS)
    p.add_argument("--wait", action="store_true", help="block until the request is applied or refused")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="with --wait: give up after S seconds (exit 1; the request stays pending)")
    p.add_argument("--as", dest="requested_by", default=None, metavar="WHO", help="who asks (default: user@host)")
    p.set_defaults(func=run)


def _arguments(verb: str, v: argparse.ArgumentParser) -> None:
    if verb in (_K.PRUNE, "add", "reinit", "lr"):
        v.add_argument("--layer", type=int, required=True, metavar="L", help="layer index (negative: from the end)")
    if verb in (_K.PRUNE, "reinit", "lr"):
        v.add_argument("--neurons", type=_ints, required=True, metavar="IDS", help="neuron indices, e.g. 0,3 or 0-4")
    if verb == "add":
        v.add_argument("--count", type=int, required=True, metavar="N", help="how many neurons")
    if verb in ("add", "reinit"):
        v.add_argument("--seed", type=int, default=None, help="seed of the new weights (default: derived)")
    if verb == "reinit":
        v.add_argument("--perturbation", type=float, default=None, metavar="R",
                       help="perturb instead: w + R·|w|·noise")
    if verb == "lr":
        v.add_argument("--lr", type=float, required=True, metavar="X", help="multiplier (1 normal, 0 frozen)")
        v.add_argument("--incoming", action="store_true", help="the weight columns of incoming neurons")
    if verb == _K.FREEZE:
        v.add_argument("--up-to", type=int, required=True, metavar="I", help="freeze layers 0..I")
    if verb == _K.UNFREEZE:
        v.add_argument("--from", dest="from_index", type=int, required=True, metavar="I",
                       help="unfreeze layers I..end")
    if verb in (_K.DENY, _K.ALLOW):
        how = v.add_mutually_exclusive_group(required=True)
        how.add_argument("--ids", type=_ints, metavar="IDS", help="sample ids, e.g. 3,7 or 10-20")
        how.add_argument("--where", metavar="QUERY", help="a pandas query over sample_stats' columns, "
                         "e.g. 'prediction_loss > 2'")
        if verb == _K.ALLOW:
            how.add_argument("--all", action="store_true", help="re-admit every sample")
        v.add_argument("--split", choices=("train", "eval"), default="train", help="which split (default train)")
    if verb == _K.SET_HYPERPARAMETERS:
        v.add_argument("--learning-rate", type=float, default=None)
        v.add_argument("--weight-decay", type=float, default=None)
        v.add_argument("--momentum", type=float, default=None)
        v.add_argument("--batch-size", type=int, default=None)
    if verb == _K.LOAD:
        v.add_argument("--checkpoint", type=int, required=True, metavar="N", help="checkpoint id")


def _payload(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The event kind and the arguments of the API call the verb asks for."""
    verb = args.verb
    kind = _VERBS[verb][0]
    out: dict[str, Any] = {}
    if verb in (_K.PRUNE, "add", "reinit", "lr"):
        out["layer_index"] = args.layer
    if verb in (_K.PRUNE, "reinit", "lr"):
        out["neuron_indices"] = args.neurons
    if verb == "add":
        out["neuron_count"] = args.count
    if verb in ("add", "reinit") and args.seed is not None:
        out["seed"] = args.seed
    if verb == "reinit" and args.perturbation is not None:
        out["perturbation_ratio"] = args.perturbation
    if verb == "lr":
        out["lr"] = args.lr
        kind = EventKind.SET_INCOMING_NEURON_LR if args.incoming else kind
    if verb == _K.FREEZE:
        out["up_to_index"] = args.up_to
    if verb == _K.UNFREEZE:
        out["from_index"] = args.from_index
    if verb in (_K.DENY, _K.ALLOW):
        out["split"] = args.split
        if args.ids is not None:
            out.update(mode="ids", ids=args.ids)
        elif args.where is not None:
            out.update(mode="where", query=args.where)
        else:
            out["mode"] = "all"
    if verb == _K.SET_HYPERPARAMETERS:
        out = {k: getattr(args, k) for k in ("learning_rate", "weight_decay", "momentum", "batch_size")
               if getattr(args, k) is not None}
    if verb == _K.LOAD:
        out["checkpoint_id"] = args.checkpoint
    return kind, out


def run(args: argparse.Namespace) -> int:
    from weightslab.history.store import Store

    if args.cancel is not None and args.verb is not None:
        raise ConfigurationError("give either a VERB (to file a request) or --cancel ID, not both")
    if args.cancel is None and args.verb is None:
        raise ConfigurationError(f"say what to request: one of {', '.join(_VERBS)} (weightslab request NAME "
                                 "VERB --help), or --cancel ID")
    if args.timeout is not None and (args.timeout <= 0 or not args.wait):
        raise ConfigurationError("--timeout takes a number of seconds > 0, with --wait")
    with Store.open(args.store, create=False) as store:
        row = store.get_experiment(args.name)
        if args.cancel is not None:
            mine = store.request(args.cancel)
            if mine is None or mine.experiment_id != row.experiment_id:
                raise ConfigurationError(f"experiment {args.name!r} has no request {args.cancel}; list them with "
                                         f"`weightslab requests {args.name}`")
            _show(store.cancel_request(args.cancel), args.format)
            return 0
        kind, payload = _payload(args)
        filed = store.file_request(args.name, kind, payload, requested_by=args.requested_by)
        if not args.wait:
            _show(filed, args.format)
            return 0
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        current = filed
        while not current.final:
            if deadline is not None and time.monotonic() >= deadline:
                _show(current, args.format, note=f"still {current.status} after {args.timeout:g} s; it stays "
                      f"queued (cancel it: weightslab request {args.name} --cancel {current.request_id})")
                return 1
            time.sleep(POLL_SECONDS)
            current = store.request(filed.request_id) or current
        _show(current, args.format)
        return 0 if current.applied_seq is not None or current.status == "applied" else 1


def _show(row: Any, fmt: str, note: str = "") -> None:
    from weightslab.cli.output import print_json

    if fmt == "json":
        record = {k: getattr(row, k) for k in ("request_id", "experiment_id", "kind", "payload", "requested_by",
                                               "requested_at", "status", "applied_seq", "error", "finished_at")}
        print_json(record | ({"note": note} if note else {}))
        return
    args = ", ".join(f"{k}={v}" for k, v in row.payload.items())
    line = f"request {row.request_id} ({row.kind} {args}): {row.status}"
    if row.applied_seq is not None:
        line += f", event seq {row.applied_seq}"
    if row.error:
        line += f": {row.error}"
    print(line + (f"; {note}" if note else ""))
