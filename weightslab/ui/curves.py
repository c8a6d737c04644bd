"""Loss and accuracy against model age, one line per branch, with the operations as markers.

Points come from the typed events: ``StepsTrained`` (loss and accuracy of the
call, at its ``age_after``) and ``Evaluated`` (at its ``model_age``, else the age
before it). Every other event is a marker at the age it happened: a load at the
age of the checkpoint it restored, a resume at the age of the state it restored.
Each point and marker goes to its branch (:mod:`weightslab.history.branches`), so
within a line the age only grows. The result is plain JSON for the page's charts.
"""

from __future__ import annotations

from typing import Any

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    Evaluated,
    ExperimentResumed,
    StepsTrained,
)
from weightslab.history.branches import branch_of_entries
from weightslab.history.log import Log
from weightslab.ui.values import finite

__all__ = ["curves"]


def curves(log: Log, experiment: str | None = None) -> dict[str, Any]:
    """The curves of a walked log, as ``{"branches": [...]}`` in the order the branches started.

    Each branch: ``{"name", "experiment", "train": [[age, loss, accuracy, seq], ...], "eval": [...],
    "markers": [[age, seq, kind, summary], ...]}``; a missing loss or accuracy is null.

    Example:
        >>> [(b["name"], len(b["train"])) for b in curves(walk(store, "x0"))["branches"]]
        [('c0', 32), ('c1-from-c0', 6), ('c2-from-c0', 4)]
    """
    branches: dict[str, dict[str, Any]] = {}
    age = 0
    ages: dict[int, int] = {}  # the age after each seq
    dumped: dict[int, int] = {}  # each checkpoint's age
    for entry, name in zip(log, branch_of_entries(log)):
        event = entry.event
        if isinstance(event, StepsTrained):
            age = event.age_after
        elif isinstance(event, Evaluated) and event.model_age is not None:
            age = event.model_age
        elif isinstance(event, CheckpointDumped):
            age = dumped[event.checkpoint_id] = event.model_age
        elif isinstance(event, CheckpointLoaded):
            age = dumped.get(event.checkpoint_id, age)
        elif isinstance(event, ExperimentResumed) and event.restored_seq is not None:
            age = ages.get(event.restored_seq, age)
        ages[entry.seq] = age
        branch = branches.setdefault(name, {"name": name, "experiment": experiment or log.name, "train": [],
                                            "eval": [], "markers": []})
        if isinstance(event, StepsTrained | Evaluated):
            split = "train" if isinstance(event, StepsTrained) else "eval"
            branch[split].append([age, _rounded(event.loss), _rounded(event.accuracy), entry.seq])
        else:
            branch["markers"].append([age, entry.seq, entry.kind, event.summary()])
    return {"branches": list(branches.values())}


def _rounded(value: Any) -> float | None:
    f = finite(value)
    return None if f is None else float(f"{f:.6g}")  # six digits: a tenth of the JSON of a long run
