"""Domain events: one frozen, versioned class per event kind, and the one decoder.

An event is a fact, in the past tense: ``NeuronsPruned``, ``SamplesDenied``. Each
class names its ``KIND`` (the ``events.kind`` column, SPEC §4) and its ``VERSION``;
:meth:`DomainEvent.to_payload` gives the JSON payload that is stored (and hashed),
:func:`decode` turns a stored ``(kind, payload)`` back into its class, upcasting
payloads written by older versions on the way (the ``eventsourcing`` way: stored
bytes never change, readers see the current shape). Decoding is strict: an
unknown kind, an unknown key or a value of the wrong type is refused with
:class:`~weightslab.errors.EventPayloadError`, so every reader sees the same facts.

Payload layout (that of the first stored logs, so old stores decode as they are):
edits keep the arguments that re-execute them under ``args`` and what they did
under ``result``; every event holds ``state`` (the fingerprint of each state group
after it) and, when it stored tensors beside it, ``blobs`` (name → blob hash); a
version above 1 is written as ``v``.

Pure: no torch, no SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from weightslab.errors import EventPayloadError
from weightslab.events import payload
from weightslab.events.payload import ARGS, BOOL, FLOAT, HASHES, INT, INTS, JSON, OBJ, RESULT, STR, STRS
from weightslab.events.payload import field as _f

__all__ = [
    "EVENT_CLASSES",
    "CheckpointDumped",
    "CheckpointLoaded",
    "DomainEvent",
    "EditEvent",
    "Evaluated",
    "EventKind",
    "ExperimentCreated",
    "ExperimentResumed",
    "HyperparametersSet",
    "IncomingNeuronLearningRateSet",
    "LayersFrozen",
    "LayersUnfrozen",
    "NeuronLearningRateSet",
    "NeuronsAdded",
    "NeuronsPruned",
    "NeuronsReinitialized",
    "REQUESTED_V2",
    "RecordedEvent",
    "SampleEvent",
    "SamplesAllowed",
    "SamplesDenied",
    "StepsTrained",
    "UndecodedEvent",
    "decode",
    "event_class",
]

E = TypeVar("E", bound="DomainEvent")

def _ids(values: Any, limit: int = 8) -> str:
    vals = list(values or [])
    shown = ", ".join(str(v) for v in vals[:limit])
    return "{" + shown + (f", … +{len(vals) - limit}" if len(vals) > limit else "") + "}"


def _n(x: Any) -> str:
    return f"{int(x):,}" if isinstance(x, int | float) else str(x)


# -- the base class -------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    """Base of every event: the state fingerprint after it and the blobs it names.

    Attributes:
        state: fingerprint of each state group (model, optim, ledger, sampler, rng) after the event.
        blobs: tensors stored beside the event, by name (e.g. the sampler and RNG state a training
            call started from, or a long id list).
    """

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    #: The event sets the whole state from a manifest (:meth:`restored_manifest` names it).
    RESTORES: ClassVar[bool] = False
    #: Listed as an operation between checkpoints (training, edits, data changes).
    OPERATION: ClassVar[bool] = True

    state: Mapping[str, str] = _f(HASHES, default={})
    blobs: Mapping[str, str] = _f(HASHES, default={})

    @property
    def kind(self) -> str:
        return self.KIND

    def restored_manifest(self) -> str | None:
        """The manifest whose state this event restores (creation, load, resume), else None."""
        return None

    def manifests(self) -> list[str]:
        """Every state manifest the event names (what an audit must find intact)."""
        named = self.restored_manifest()
        return [named] if named else []

    def summary(self) -> str:
        """A one-line description for listings and the lineage tree."""
        return self.KIND

    # -- encoding (weightslab/events/payload.py) ---------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        """The JSON payload that is stored (and hashed) for this event."""
        return payload.encode(self, self.VERSION)

    @classmethod
    def from_payload(cls: type[E], body: Mapping[str, Any]) -> E:
        """Decode a payload of this kind at :attr:`VERSION` (see :func:`decode`, which upcasts first).

        Raises:
            EventPayloadError: an unknown key, a missing field or a value of the wrong type.
        """
        return cls(**payload.fields_of(cls, cls.KIND, cls.VERSION, body))


# -- lifecycle ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ExperimentCreated(DomainEvent):
    """The experiment was created: its settings, its data sets' fingerprints, the environment it runs in
    (what changes floating-point results) and its initial state.

    Version 2 added ``environment``, ``labels_known`` (every sample's label read at creation) and
    ``fingerprint`` (the version of the experiment's state fingerprints).
    """

    KIND: ClassVar[str] = "create"
    VERSION: ClassVar[int] = 2
    RESTORES: ClassVar[bool] = True
    OPERATION: ClassVar[bool] = False

    name: str = _f(STR)
    initial: str = _f(STR)  # manifest of the initial state
    config: Mapping[str, Any] | None = _f(OBJ + "?", default=None, omit_none=True)
    optimizer_class: str | None = _f(STR + "?", default=None, omit_none=True)
    model_class: str | None = _f(STR + "?", default=None, omit_none=True)
    train_fingerprint: str | None = _f(STR + "?", default=None, omit_none=True)
    eval_fingerprint: str | None = _f(STR + "?", default=None, omit_none=True)
    train_size: int | None = _f(INT + "?", default=None, omit_none=True)
    eval_size: int | None = _f(INT + "?", default=None, omit_none=True)
    recipe: str | None = _f(STR + "?", default=None, omit_none=True)
    environment: Mapping[str, Any] | None = _f(OBJ + "?", default=None)  # None: not recorded (version 1)
    labels_known: bool = _f(BOOL, default=False)
    fingerprint: int = _f(INT, default=1)  # what state fingerprints cover (history/manifest.state_digest)

    def restored_manifest(self) -> str:
        return self.initial

    def summary(self) -> str:
        return f"create experiment {self.name}"


@dataclass(frozen=True, kw_only=True)
class ExperimentResumed(DomainEvent):
    """The experiment was reopened: the state of ``manifest`` (its base, the event at ``base_seq``) was
    restored and the events ``replayed`` re-executed and verified, reaching the state after
    ``restored_seq``; ``not_restored`` could not be reproduced. ``environment`` is the one the experiment
    continues in; ``forced`` lists the differences from the recorded environment that were accepted.

    Version 2 added ``environment``, ``forced`` and ``restored_seq``, and dropped ``replayed_ops``.
    """

    KIND: ClassVar[str] = "resume"
    VERSION: ClassVar[int] = 2
    RESTORES: ClassVar[bool] = True
    OPERATION: ClassVar[bool] = False

    checkpoint_id: int | None = _f(INT + "?")
    manifest: str = _f(STR)
    base_seq: int | None = _f(INT + "?", default=None, omit_none=True)
    replayed: tuple[int, ...] = _f(INTS, default=())
    not_restored: tuple[int, ...] = _f(INTS, default=())
    restored_seq: int | None = _f(INT + "?", default=None)
    environment: Mapping[str, Any] | None = _f(OBJ + "?", default=None)
    forced: tuple[str, ...] = _f(STRS, default=())

    def restored_manifest(self) -> str:
        return self.manifest

    def summary(self) -> str:
        where = "the initial state" if self.checkpoint_id is None else f"checkpoint {self.checkpoint_id}"
        lost = f"; events {_ids(self.not_restored)} not restored" if self.not_restored else ""
        return f"resume from {where}{lost}"


def _created_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """create v1 → v2: the environment was not recorded, labels were read as samples were seen, fingerprints
    covered the tensors only."""
    return {**payload, "environment": None, "labels_known": False, "fingerprint": 1}


def _resumed_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """resume v1 → v2: no environment recorded, nothing forced; the restored seq is the last one replayed."""
    out = {k: v for k, v in payload.items() if k != "replayed_ops"}
    replayed = out.get("replayed") or []
    out.update(environment=None, forced=[], restored_seq=replayed[-1] if replayed else out.get("base_seq"))
    return out


@dataclass(frozen=True, kw_only=True)
class CheckpointDumped(DomainEvent):
    """Checkpoint ``checkpoint_id`` was saved: ``manifest`` names every tensor of the state.

    Version 2 added ``request`` (see :data:`REQUESTED_V2`).
    """

    KIND: ClassVar[str] = "dump"
    VERSION: ClassVar[int] = 2
    OPERATION: ClassVar[bool] = False

    checkpoint_id: int = _f(INT)
    parent_id: int | None = _f(INT + "?", default=None)
    manifest: str = _f(STR)
    model_age: int = _f(INT, default=0)
    architecture: tuple[int, ...] = _f(INTS, default=())
    request: int | None = _f(INT + "?", default=None, omit_none=True)  # the outside request it applied (v2)

    def manifests(self) -> list[str]:
        return [self.manifest]

    def summary(self) -> str:
        return f"dump checkpoint {self.checkpoint_id}"


@dataclass(frozen=True, kw_only=True)
class CheckpointLoaded(DomainEvent):
    """Checkpoint ``checkpoint_id`` was restored: the state is that of ``manifest``.

    Version 2 added ``request`` (see :data:`REQUESTED_V2`).
    """

    KIND: ClassVar[str] = "load"
    VERSION: ClassVar[int] = 2
    RESTORES: ClassVar[bool] = True
    OPERATION: ClassVar[bool] = False

    checkpoint_id: int = _f(INT)
    manifest: str = _f(STR)
    request: int | None = _f(INT + "?", default=None, omit_none=True)  # the outside request it applied (v2)

    def restored_manifest(self) -> str:
        return self.manifest

    def summary(self) -> str:
        return f"load checkpoint {self.checkpoint_id}"


# -- training and evaluation ------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class StepsTrained(DomainEvent):
    """``steps`` training batches ran; ``blobs`` hold the sampler and RNG state they started from.

    Version 2 added ``step`` (the step function of a call that ran another than the experiment's) and
    ``replayable`` (False: the user's own loop ran it, and replay cannot re-execute it).
    """

    KIND: ClassVar[str] = "train"
    VERSION: ClassVar[int] = 2

    steps: int = _f(INT)
    batch_size: int | None = _f(INT + "?", default=None, omit_none=True)
    samples: int | None = _f(INT + "?", default=None, omit_none=True)
    age_before: int = _f(INT)
    age_after: int = _f(INT)
    loss: float | None = _f(FLOAT + "?", default=None)
    accuracy: float | None = _f(FLOAT + "?", default=None)
    step: str | None = _f(STR + "?", default=None, omit_none=True)
    replayable: bool = _f(BOOL, default=True)

    def summary(self) -> str:
        how = "" if self.replayable else ", own loop"
        return f"train {self.steps} steps (age {_n(self.age_before)} → {_n(self.age_after)}{how})"


@dataclass(frozen=True, kw_only=True)
class Evaluated(DomainEvent):
    """The model was evaluated on ``steps`` eval batches (``full``: on every allowed eval sample)."""

    KIND: ClassVar[str] = "eval"
    OPERATION: ClassVar[bool] = False

    steps: int | None = _f(INT + "?", default=None)
    full: bool = _f(BOOL, default=False)
    samples: int | None = _f(INT + "?", default=None, omit_none=True)
    loss: float | None = _f(FLOAT + "?", default=None)
    accuracy: float | None = _f(FLOAT + "?", default=None)
    model_age: int | None = _f(INT + "?", default=None, omit_none=True)

    def summary(self) -> str:
        what = "full" if self.full else f"{self.steps} steps"
        tail = (f": loss {self.loss:.4f}, accuracy {self.accuracy:.2%}"
                if self.loss is not None and self.accuracy is not None else "")
        return f"eval {what}{tail}"


@dataclass(frozen=True, kw_only=True)
class HyperparametersSet(DomainEvent):
    """Hyper-parameters were set between calls (those not named kept their values).

    Version 2 added ``request`` (see :data:`REQUESTED_V2`).
    """

    KIND: ClassVar[str] = "set_hyperparameters"
    VERSION: ClassVar[int] = 2

    learning_rate: float | None = _f(FLOAT + "?", ARGS, default=None, omit_none=True)
    weight_decay: float | None = _f(FLOAT + "?", ARGS, default=None, omit_none=True)
    momentum: float | None = _f(FLOAT + "?", ARGS, default=None, omit_none=True)
    batch_size: int | None = _f(INT + "?", ARGS, default=None, omit_none=True)
    request: int | None = _f(INT + "?", default=None, omit_none=True)  # the outside request it applied (v2)

    def values(self) -> dict[str, Any]:
        """The hyper-parameters it set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["where"] == ARGS and getattr(self, f.name) is not None}

    def summary(self) -> str:
        return "set " + ", ".join(f"{k} {v}" for k, v in self.values().items())


# -- model edits ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class EditEvent(DomainEvent):
    """A model edit: ``METHOD`` of ``NetworkWithOps`` re-executes it with :meth:`call_args`.

    Version 2 added ``request`` (see :data:`REQUESTED_V2`).
    """

    METHOD: ClassVar[str] = ""
    VERSION: ClassVar[int] = 2

    changed: tuple[str, ...] = _f(STRS, RESULT, default=())  # qualified names of the layers it changed
    request: int | None = _f(INT + "?", default=None, omit_none=True)  # the outside request it applied (v2)

    def call_args(self) -> dict[str, Any]:
        """The keyword arguments that re-execute the edit exactly (its recorded seed included)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if f.metadata["where"] == ARGS}


@dataclass(frozen=True, kw_only=True)
class NeuronsAdded(EditEvent):
    """``neuron_count`` neurons were added to layer ``layer_index`` and its coupled group."""

    KIND: ClassVar[str] = "add_neurons"
    METHOD: ClassVar[str] = "add_neurons"

    layer_index: int = _f(INT, ARGS)
    neuron_count: int = _f(INT, ARGS)
    seed: int | None = _f(INT + "?", ARGS, default=None, omit_none=True)
    widths: tuple[int, ...] = _f(INTS, RESULT, default=())

    def summary(self) -> str:
        return f"add {self.neuron_count} neurons to layer {self.layer_index}"


@dataclass(frozen=True, kw_only=True)
class NeuronsPruned(EditEvent):
    """Neurons ``neuron_indices`` of layer ``layer_index`` (and their coupled group) were removed."""

    KIND: ClassVar[str] = "prune"
    METHOD: ClassVar[str] = "prune"

    layer_index: int = _f(INT, ARGS)
    neuron_indices: tuple[int, ...] = _f(INTS, ARGS)
    widths: tuple[int, ...] = _f(INTS, RESULT, default=())

    def summary(self) -> str:
        return f"prune layer {self.layer_index} {_ids(self.neuron_indices)}"


@dataclass(frozen=True, kw_only=True)
class NeuronsReinitialized(EditEvent):
    """The incoming weights of neurons ``neuron_indices`` were drawn again (or perturbed)."""

    KIND: ClassVar[str] = "reinit_neurons"
    METHOD: ClassVar[str] = "reinit_neurons"

    layer_index: int = _f(INT, ARGS)
    neuron_indices: tuple[int, ...] = _f(INTS, ARGS)
    perturbation_ratio: float | None = _f(FLOAT + "?", ARGS, default=None)
    seed: int | None = _f(INT + "?", ARGS, default=None, omit_none=True)

    def summary(self) -> str:
        how = f" (perturbation {self.perturbation_ratio})" if self.perturbation_ratio is not None else ""
        return f"reinit layer {self.layer_index} {_ids(self.neuron_indices)}{how}"


@dataclass(frozen=True, kw_only=True)
class _LearningRateSet(EditEvent):
    """Base of the two learning-rate events: which neurons of which layer, and the multiplier."""

    WHAT: ClassVar[str] = ""

    layer_index: int = _f(INT, ARGS)
    neuron_indices: tuple[int, ...] = _f(INTS, ARGS)
    lr: float = _f(FLOAT, ARGS)

    def summary(self) -> str:
        return f"lr ×{self.lr} for layer {self.layer_index} {self.WHAT} {_ids(self.neuron_indices)}"


@dataclass(frozen=True, kw_only=True)
class NeuronLearningRateSet(_LearningRateSet):
    """The update of neurons ``neuron_indices`` is multiplied by ``lr`` from now on."""

    KIND: ClassVar[str] = "set_neuron_lr"
    METHOD: ClassVar[str] = "set_per_neuron_learning_rate"
    WHAT: ClassVar[str] = "neurons"


@dataclass(frozen=True, kw_only=True)
class IncomingNeuronLearningRateSet(_LearningRateSet):
    """The update of the weight columns of incoming neurons ``neuron_indices`` is multiplied by ``lr``."""

    KIND: ClassVar[str] = "set_incoming_neuron_lr"
    METHOD: ClassVar[str] = "set_per_incoming_neuron_learning_rate"
    WHAT: ClassVar[str] = "incoming"


@dataclass(frozen=True, kw_only=True)
class LayersFrozen(EditEvent):
    """Layers ``0..up_to_index`` (and their batch norms) were frozen."""

    KIND: ClassVar[str] = "freeze"
    METHOD: ClassVar[str] = "freeze_layers_up_to_idx"

    up_to_index: int = _f(INT, ARGS)

    def summary(self) -> str:
        return f"freeze layers 0..{self.up_to_index}"


@dataclass(frozen=True, kw_only=True)
class LayersUnfrozen(EditEvent):
    """Layers ``from_index..end`` (and their batch norms) were unfrozen."""

    KIND: ClassVar[str] = "unfreeze"
    METHOD: ClassVar[str] = "unfreeze_layers_from_idx"

    from_index: int = _f(INT, ARGS)

    def summary(self) -> str:
        return f"unfreeze layers {self.from_index}.."


# -- data edits ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SampleEvent(DomainEvent):
    """Samples of ``split`` were denied or allowed. ``ids`` re-executes it exactly; a long list is the
    blob ``blobs["ids"]`` instead (then ``ids`` is None).

    Version 2 added ``request`` (see :data:`REQUESTED_V2`).
    """

    VERSION: ClassVar[int] = 2

    split: str = _f(STR, default="train")
    ids: tuple[int, ...] | None = _f(INTS + "?", ARGS, default=None, omit_none=True)
    mode: str | None = _f(STR + "?", ARGS, default=None, omit_none=True)  # predicate, sampled, where, ids, all
    query: str | None = _f(STR + "?", ARGS, default=None, omit_none=True)
    allow_to_denied_factor: float | None = _f(FLOAT + "?", ARGS, default=None, omit_none=True)
    seed: int | None = _f(INT + "?", ARGS, default=None, omit_none=True)
    changed: int = _f(INT, RESULT, default=0)
    matching: int | None = _f(INT + "?", RESULT, default=None, omit_none=True)
    kept_allowed: int | None = _f(INT + "?", RESULT, default=None, omit_none=True)
    request: int | None = _f(INT + "?", default=None, omit_none=True)  # the outside request it applied (v2)

    def summary(self) -> str:
        return f"{self.KIND} {self.changed} {self.split} samples" + (f" ({self.mode})" if self.mode else "")


@dataclass(frozen=True, kw_only=True)
class SamplesDenied(SampleEvent):
    KIND: ClassVar[str] = "deny"


@dataclass(frozen=True, kw_only=True)
class SamplesAllowed(SampleEvent):
    KIND: ClassVar[str] = "allow"


# -- the registry and the one decoder ----------------------------------------------------------------------------

EVENT_CLASSES: dict[str, type[DomainEvent]] = {cls.KIND: cls for cls in (
    ExperimentCreated, ExperimentResumed, CheckpointDumped, CheckpointLoaded, StepsTrained, Evaluated,
    NeuronsAdded, NeuronsPruned, NeuronsReinitialized, NeuronLearningRateSet, IncomingNeuronLearningRateSet,
    LayersFrozen, LayersUnfrozen, SamplesDenied, SamplesAllowed, HyperparametersSet,
)}


class EventKind:
    """The ``kind`` of each event class (SPEC §4), for code that names a kind without its class."""

    CREATE = ExperimentCreated.KIND
    RESUME = ExperimentResumed.KIND
    DUMP = CheckpointDumped.KIND
    LOAD = CheckpointLoaded.KIND
    TRAIN = StepsTrained.KIND
    EVAL = Evaluated.KIND
    ADD_NEURONS = NeuronsAdded.KIND
    PRUNE = NeuronsPruned.KIND
    REINIT_NEURONS = NeuronsReinitialized.KIND
    SET_NEURON_LR = NeuronLearningRateSet.KIND
    SET_INCOMING_NEURON_LR = IncomingNeuronLearningRateSet.KIND
    FREEZE = LayersFrozen.KIND
    UNFREEZE = LayersUnfrozen.KIND
    DENY = SamplesDenied.KIND
    ALLOW = SamplesAllowed.KIND
    SET_HYPERPARAMETERS = HyperparametersSet.KIND


#: The kinds whose version 2 added ``request``: the id of the outside request (the ``requests`` table) the
#: event applied, absent when the process that holds the experiment made the call itself. Their version-1
#: payloads upcast unchanged (no request).
REQUESTED_V2 = (CheckpointDumped, CheckpointLoaded, HyperparametersSet, NeuronsAdded, NeuronsPruned,
                NeuronsReinitialized, NeuronLearningRateSet, IncomingNeuronLearningRateSet, LayersFrozen,
                LayersUnfrozen, SamplesDenied, SamplesAllowed)

#: Upcasters: (kind, version) → a function turning a payload of that version into one of the next.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    (ExperimentCreated.KIND, 1): _created_v1,
    (ExperimentResumed.KIND, 1): _resumed_v1,
    (StepsTrained.KIND, 1): lambda payload: payload,  # v2 only added fields with defaults
    **{(cls.KIND, 1): (lambda payload: payload) for cls in REQUESTED_V2},  # v2 added request (default None)
}


def event_class(kind: str) -> type[DomainEvent]:
    """The class of events of ``kind``.

    Raises:
        EventPayloadError: no such kind (a store written by a newer WeightsLab, or damaged).
    """
    cls = EVENT_CLASSES.get(kind)
    if cls is None:
        raise EventPayloadError(
            f"unknown event kind {kind!r}: this WeightsLab knows {', '.join(sorted(EVENT_CLASSES))}. The "
            "store was written by a newer version (upgrade: pip install -U weightslab) or changed outside it")
    return cls


def decode(kind: str, stored: Mapping[str, Any]) -> DomainEvent:
    """The typed event of a stored ``(kind, payload)``, upcast to the current version.

    Raises:
        EventPayloadError: an unknown kind or key, a missing field, a value of the wrong type,
            or a version newer than this code.

    Example:
        >>> decode("prune", {"args": {"layer_index": 0, "neuron_indices": [1]}, "result": {}}).neuron_indices
        (1,)
    """
    cls = event_class(kind)
    if not isinstance(stored, Mapping):
        raise EventPayloadError(f"{kind} event: payload is a {type(stored).__name__}, expected an object")
    body = dict(stored)
    version = body.pop("v", 1)
    if not payload.is_int(version) or version < 1:
        raise EventPayloadError(f"{kind} event: version {version!r} is not a positive integer")
    if version > cls.VERSION:
        raise EventPayloadError(
            f"{kind} event has version {version}, newer than this WeightsLab's {cls.VERSION}: upgrade "
            "WeightsLab (pip install -U weightslab) to read this store")
    while version < cls.VERSION:
        body = UPCASTERS[(kind, version)](body)
        version += 1
    return cls.from_payload(body)


@dataclass(frozen=True, kw_only=True)
class UndecodedEvent(DomainEvent):
    """A stored event that does not decode (an unknown kind or key, a wrong type): what listings show of a
    damaged or foreign log instead of failing. Replay, lineage and diff never accept one."""

    OPERATION: ClassVar[bool] = False

    stored_kind: str = _f(STR)
    payload: Mapping[str, Any] = _f(JSON)
    error: str = _f(STR)

    @property
    def kind(self) -> str:
        return self.stored_kind

    def to_payload(self) -> dict[str, Any]:
        return dict(self.payload)

    def summary(self) -> str:
        return f"{self.stored_kind}: does not decode ({self.error})"


@dataclass(frozen=True)
class RecordedEvent:
    """A typed event with its place in the log: seq, time, who, code, hashes."""

    experiment_id: int
    seq: int
    created_at: datetime
    actor: str
    code_version: str
    state_hash: str | None
    prev_hash: str | None
    hash: str
    event: DomainEvent

    @property
    def kind(self) -> str:
        return self.event.kind

    @classmethod
    def from_row(cls, row: Any, *, strict: bool = True) -> RecordedEvent:
        """Decode a stored event row (anything with the columns of ``events``).

        ``strict=False`` turns an event that does not decode into an :class:`UndecodedEvent` (for listings).

        Raises:
            EventPayloadError: see :func:`decode` (the message names the seq).
        """
        try:
            event: DomainEvent = decode(row.kind, row.payload)
        except EventPayloadError as e:
            if strict:
                raise EventPayloadError(f"seq {row.seq}: {e}") from e
            event = UndecodedEvent(stored_kind=str(row.kind), payload=dict(row.payload), error=str(e))
        return cls(row.experiment_id, row.seq, row.created_at, row.actor, row.code_version, row.state_hash,
                   row.prev_hash, row.hash, event)
