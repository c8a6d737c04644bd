"""The experiments page: one row per experiment, sortable and filterable.

A row: name, creation time, model age, the last training and evaluation
loss and accuracy, the hyper-parameters recorded at creation, and the numbers of
events, checkpoints and denied samples. Read with a few queries for the whole
store (the latest event of each kind that carries a loss or an age, by the
``(experiment_id, kind)`` index) and one count of denied samples per experiment,
kept while its head does not move.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from weightslab.errors import EventPayloadError
from weightslab.events.domain import CheckpointDumped, CheckpointLoaded, Evaluated, StepsTrained, decode
from weightslab.history.audit import experiments_frame
from weightslab.history.store import Store
from weightslab.ui.memo import Memo
from weightslab.ui.values import as_json, as_utc, finite

__all__ = ["SORT_KEYS", "ExperimentSummary", "denied_count", "experiment_summaries", "filtered", "hyperparameters",
           "sorted_by"]

_LATEST = (
    "SELECT e.experiment_id, e.seq, e.kind, e.payload FROM events e JOIN ("
    " SELECT experiment_id, kind, MAX(seq) AS seq FROM events WHERE kind IN (:k_train, :k_eval, :k_dump, :k_load)"
    " GROUP BY experiment_id, kind) latest ON e.experiment_id = latest.experiment_id AND e.seq = latest.seq"
)
_HEADS = "SELECT experiment_id, head_seq FROM experiments"
_CHECKPOINT_AGES = "SELECT experiment_id, checkpoint_id, model_age FROM checkpoints"
_DENIED = "SELECT COUNT(*) AS n FROM sample_stats WHERE experiment_id = :e AND deny_listed"
_DENIED_MEMO = Memo(ttl=10.0)  # statistics rows land a moment after their event: recount now and then


@dataclass(frozen=True)
class ExperimentSummary:
    """One row of the experiments page."""

    experiment_id: int
    name: str
    created_at: datetime | None
    last_event_at: datetime | None
    head_seq: int
    model_age: int | None
    train_loss: float | None
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    hyperparameters: dict[str, Any]
    events: int
    checkpoints: int
    denied: int
    recipe: str | None

    @property
    def hyperparameters_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.hyperparameters.items())


#: What the page sorts by: column name → the row's value.
SORT_KEYS = ("name", "created_at", "last_event_at", "model_age", "train_loss", "train_accuracy", "eval_loss",
             "eval_accuracy", "events", "checkpoints", "denied")


def experiment_summaries(store: Store) -> list[ExperimentSummary]:
    """Every experiment of ``store``, by id.

    Example:
        >>> [s.name for s in experiment_summaries(Store.open("./store", read_only=True))]
    """
    frame = experiments_frame(store)
    configs = {e.experiment_id: (e.config, e.recipe) for e in store.list_experiments()}
    heads = {int(r.experiment_id): int(r.head_seq or 0) for r in store.query(_HEADS).itertuples()}
    latest = _latest_events(store)
    ages = {(int(r.experiment_id), int(r.checkpoint_id)): r.model_age for r in store.query(_CHECKPOINT_AGES).itertuples()}
    rows = []
    for r in frame.itertuples():
        eid = int(r.experiment_id)
        config, recipe = configs.get(eid, ({}, None))
        found = latest.get(eid, {})
        train, evaluated = found.get(StepsTrained.KIND), found.get(Evaluated.KIND)
        rows.append(ExperimentSummary(
            experiment_id=eid, name=str(r.name), created_at=as_utc(r.created_at),
            last_event_at=as_utc(r.last_event_at), head_seq=heads.get(eid, int(r.events)),
            model_age=_model_age(eid, found, ages),
            train_loss=finite(getattr(train, "loss", None)), train_accuracy=finite(getattr(train, "accuracy", None)),
            eval_loss=finite(getattr(evaluated, "loss", None)),
            eval_accuracy=finite(getattr(evaluated, "accuracy", None)),
            hyperparameters=hyperparameters(config or {}), events=int(r.events), checkpoints=int(r.checkpoints),
            denied=denied_count(store, eid, heads.get(eid, 0)), recipe=recipe))
    return rows


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The settings recorded at creation that were given a value, e.g. learning_rate, batch_size, optimizer."""
    nested = config.get("config")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else config
    out = {k: v for k, v in inner.items() if v not in (None, {}, [], "") and not isinstance(v, dict | list)}
    optimizer = config.get("optimizer_class")
    if isinstance(optimizer, str):
        out["optimizer"] = optimizer.rsplit(".", 1)[-1]
    return out


def filtered(rows: list[ExperimentSummary], text: str) -> list[ExperimentSummary]:
    """The rows whose name or hyper-parameters contain ``text`` (any case)."""
    needle = text.strip().lower()
    if not needle:
        return rows
    return [r for r in rows if needle in r.name.lower() or needle in r.hyperparameters_text.lower()]


def sorted_by(rows: list[ExperimentSummary], key: str, descending: bool) -> list[ExperimentSummary]:
    """The rows by ``key`` (one of :data:`SORT_KEYS`; others: by id); missing values last."""
    if key not in SORT_KEYS:
        return sorted(rows, key=lambda r: r.experiment_id, reverse=descending)
    present = [r for r in rows if getattr(r, key) is not None]
    missing = [r for r in rows if getattr(r, key) is None]
    return sorted(present, key=lambda r: getattr(r, key), reverse=descending) + missing


def _latest_events(store: Store) -> dict[int, dict[str, Any]]:
    """Per experiment, the latest train, eval, dump and load event, decoded (by kind), with its seq."""
    kinds = {f"k_{cls.KIND}": cls.KIND for cls in (StepsTrained, Evaluated, CheckpointDumped, CheckpointLoaded)}
    out: dict[int, dict[str, Any]] = {}
    for r in store.query(_LATEST, kinds).itertuples():
        try:
            event = decode(r.kind, as_json(r.payload))
        except (EventPayloadError, ValueError):
            continue  # listed as undecodable on the experiment's page; here it gives no value
        out.setdefault(int(r.experiment_id), {})[r.kind] = event
        out[int(r.experiment_id)][f"{r.kind}:seq"] = int(r.seq)
    return out


def _model_age(eid: int, found: dict[str, Any], ages: dict[tuple[int, int], Any]) -> int | None:
    """The model age after the latest event that sets it: a training call, a dump, a load (its checkpoint's
    age), or an evaluation that recorded it."""
    candidates = []
    for kind in (StepsTrained.KIND, CheckpointDumped.KIND, CheckpointLoaded.KIND, Evaluated.KIND):
        event = found.get(kind)
        age: Any = None
        if event is None:
            continue
        if isinstance(event, StepsTrained):
            age = event.age_after
        elif isinstance(event, CheckpointDumped | Evaluated):
            age = event.model_age
        else:
            age = ages.get((eid, event.checkpoint_id))
        if age is not None:
            candidates.append((found[f"{kind}:seq"], int(age)))
    return max(candidates)[1] if candidates else None


def denied_count(store: Store, experiment_id: int, head_seq: int) -> int:
    """How many samples of the experiment are denied now (counted again when the head moves, or after 10 s)."""
    return _DENIED_MEMO.get(("denied", store.describe(), experiment_id, head_seq),
                            lambda: int(store.query(_DENIED, {"e": experiment_id}).iloc[0, 0]))
