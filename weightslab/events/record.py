"""The observer contract: how an operation tells the world it happened.

Every editing operation (on the model, a layer, or a dataset wrapper) describes
itself, after it succeeded, as one :class:`OperationRecord` handed to each
observer of the object it was invoked on. The Experiment is such an observer
and turns records into events; a refused operation produces no record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EventKind", "Observable", "OperationRecord"]


class EventKind:
    """Event ``kind`` values (SPEC §4)."""

    CREATE = "create"
    TRAIN = "train"
    EVAL = "eval"
    ADD_NEURONS = "add_neurons"
    PRUNE = "prune"
    REINIT_NEURONS = "reinit_neurons"
    SET_NEURON_LR = "set_neuron_lr"
    SET_INCOMING_NEURON_LR = "set_incoming_neuron_lr"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    DENY = "deny"
    ALLOW = "allow"
    DUMP = "dump"
    LOAD = "load"
    RESUME = "resume"


@dataclass(frozen=True)
class OperationRecord:
    """A completed operation: what was asked, and what it did.

    Attributes:
        kind: one of :class:`EventKind`.
        args: JSON-serialisable arguments that re-execute the operation exactly
            (including any random seed it drew).
        result: JSON-serialisable outcome (e.g. new widths, ids changed).
    """

    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)


Observer = Callable[[OperationRecord], None]


class Observable:
    """Mixin: a list of observers and one place that notifies them."""

    def _observers_list(self) -> list[Observer]:
        obs = self.__dict__.get("_wl_observers")
        if obs is None:
            obs = []
            self.__dict__["_wl_observers"] = obs
        return obs

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` after every successful operation on this object."""
        obs = self._observers_list()
        if observer not in obs:
            obs.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop notifying ``observer`` (no error if it was not registered)."""
        obs = self._observers_list()
        if observer in obs:
            obs.remove(observer)

    def _notify(self, record: OperationRecord) -> None:
        for observer in list(self._observers_list()):
            observer(record)
