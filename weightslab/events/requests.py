"""What may be asked of a running experiment from outside, and the check of each request's arguments.

A request names the event kind it asks for and the arguments the API call takes;
:func:`check_request` checks them with the same typed event classes that decode
the log (:mod:`weightslab.events.domain`), so a request that passes is one the
call can be made with. What only the live experiment knows (a layer index out of
range, a query that does not parse, a checkpoint that does not exist) is checked
by the API itself when the request is applied; a refusal keeps its message.

Payloads, by kind (ids are sample ids; ``split`` is "train" (default) or "eval")::

    prune, reinit_neurons       {"layer_index", "neuron_indices", ["perturbation_ratio"] (reinit), ["seed"]}
    add_neurons                 {"layer_index", "neuron_count", ["seed"]}
    set_neuron_lr,
    set_incoming_neuron_lr      {"layer_index", "neuron_indices", "lr"}
    freeze / unfreeze           {"up_to_index"} / {"from_index"}
    deny / allow                {"split", "mode": "ids", "ids"} | {"split", "mode": "where", "query"}
                                | {"split", "mode": "all"} (allow only)
    set_hyperparameters         {"learning_rate", "weight_decay", "momentum", "batch_size"} (any of them)
    dump                        {}
    load                        {"checkpoint_id"}

Pure: no torch, no SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from weightslab.errors import ConfigurationError, EventPayloadError
from weightslab.events import payload as fields
from weightslab.events.codec import normalise
from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    DomainEvent,
    EditEvent,
    EventKind,
    HyperparametersSet,
    SampleEvent,
    SamplesAllowed,
    SamplesDenied,
)

__all__ = ["REQUEST_KINDS", "SAMPLE_MODES", "SPLITS", "check_request"]

#: The event kinds a request may ask for, in the order listings show them.
REQUEST_KINDS: tuple[str, ...] = (
    EventKind.PRUNE, EventKind.ADD_NEURONS, EventKind.REINIT_NEURONS, EventKind.SET_NEURON_LR,
    EventKind.SET_INCOMING_NEURON_LR, EventKind.FREEZE, EventKind.UNFREEZE, EventKind.DENY, EventKind.ALLOW,
    EventKind.SET_HYPERPARAMETERS, EventKind.DUMP, EventKind.LOAD,
)
SPLITS = ("train", "eval")
#: How a deny / allow request selects its samples.
SAMPLE_MODES = {SamplesDenied.KIND: ("ids", "where"), SamplesAllowed.KIND: ("ids", "where", "all")}


def check_request(kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The checked, canonical arguments of a request for ``kind``.

    Raises:
        ConfigurationError: a kind that cannot be requested, an unknown or missing argument, a value of the
            wrong type (the message names it and what is expected).

    Example:
        >>> check_request("prune", {"layer_index": 1, "neuron_indices": [0, 3]})
        {'layer_index': 1, 'neuron_indices': [0, 3]}
    """
    if kind not in REQUEST_KINDS:
        raise ConfigurationError(f"a request cannot ask for {kind!r}: it may ask for {', '.join(REQUEST_KINDS)}")
    if not isinstance(args, Mapping):
        raise ConfigurationError(f"the arguments of a {kind} request must be an object, got {type(args).__name__}")
    try:
        clean = normalise(dict(args), f"{kind} request")
    except EventPayloadError as e:
        raise ConfigurationError(str(e)) from e
    if kind == CheckpointDumped.KIND:
        _only(kind, clean, ())
    elif kind == CheckpointLoaded.KIND:
        _only(kind, clean, ("checkpoint_id",))
        cid = clean.get("checkpoint_id")
        if not fields.is_int(cid) or cid < 0:
            raise ConfigurationError(f"a load request needs checkpoint_id, an integer ≥ 0, got {cid!r}")
    elif kind in SAMPLE_MODES:
        _check_samples(kind, clean)
    else:
        cls = _edit_class(kind)
        _decode(cls, kind, {"args": clean})
        if kind == HyperparametersSet.KIND and not clean:
            raise ConfigurationError("a set_hyperparameters request needs at least one of learning_rate, "
                                     "weight_decay, momentum, batch_size")
    return dict(clean)


def _edit_class(kind: str) -> type[DomainEvent]:
    from weightslab.events.domain import event_class

    cls = event_class(kind)
    assert issubclass(cls, EditEvent | HyperparametersSet), kind
    return cls


def _decode(cls: type[DomainEvent], kind: str, body: dict[str, Any]) -> None:
    """Check ``body`` with the event class that decodes the log (the request's args are the event's)."""
    takes = [f.name for f in dataclasses.fields(cls) if f.metadata["where"] == fields.ARGS]
    unknown = sorted(set(body.get("args", {})) - set(takes))
    if unknown:
        raise ConfigurationError(f"a {kind} request takes {', '.join(takes)}; got {', '.join(unknown)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.metadata["where"] == fields.ARGS
               and f.default is dataclasses.MISSING and f.name not in body.get("args", {})]
    if missing:
        raise ConfigurationError(f"a {kind} request needs {', '.join(missing)}")
    try:
        cls.from_payload(body)
    except EventPayloadError as e:
        raise ConfigurationError(f"bad {kind} request: {str(e).removeprefix(f'{kind} event: ')}") from e


def _only(kind: str, args: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(args) - set(allowed))
    if extra:
        takes = ", ".join(allowed) if allowed else "no arguments"
        raise ConfigurationError(f"a {kind} request takes {takes}; got {', '.join(extra)}")


def _check_samples(kind: str, args: dict[str, Any]) -> None:
    split = args.setdefault("split", "train")
    if split not in SPLITS:
        raise ConfigurationError(f"a {kind} request's split must be 'train' or 'eval', got {split!r}")
    mode = args.get("mode")
    modes = SAMPLE_MODES[kind]
    if mode not in modes:
        raise ConfigurationError(f"a {kind} request selects samples by mode {' / '.join(modes)}, got {mode!r}")
    needed = {"ids": ("ids",), "where": ("query",), "all": ()}[mode]
    _only(kind, args, ("split", "mode", *needed))
    for name in needed:
        if name not in args:
            raise ConfigurationError(f"a {kind} request with mode {mode!r} needs {name}")
    if mode == "ids" and not args["ids"]:
        raise ConfigurationError(f"a {kind} request with mode 'ids' needs at least one sample id")
    if mode == "where" and not (isinstance(args["query"], str) and args["query"].strip()):
        raise ConfigurationError(f"a {kind} request with mode 'where' needs a query such as 'prediction_loss > 2'")
    cls: type[SampleEvent] = SamplesDenied if kind == SamplesDenied.KIND else SamplesAllowed
    _decode(cls, kind, {"split": split, "args": {k: v for k, v in args.items() if k != "split"}})
