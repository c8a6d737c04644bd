"""Replay: rebuild a recorded state by re-executing events, verifying each fingerprint.

State is a fold over events. Starting from a recorded state (the creation's
initial state or a checkpoint), each later event is applied again with
recording muted: training re-runs from the sampler and RNG state stored with
its event, edits call the same operation with the recorded arguments (and
seed), deny/allow re-apply the recorded ids. After each event the state's
fingerprint is compared with the recorded one; the first mismatch stops the
replay and says which part (model, optim, ledger, sampler, rng) differs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from weightslab.errors import ReplayError, WeightsLabError
from weightslab.experiment.checkpoints import read_manifest
from weightslab.experiment.rng import restore_rng
from weightslab.history.blobs import check_hash
from weightslab.history.tensorcodec import decode_tensor
from weightslab.surgery.operations import METHOD_OF_KIND

if TYPE_CHECKING:
    from weightslab.experiment.experiment import Experiment
    from weightslab.history.eventlog import EventRow

__all__ = ["Divergence", "ReplayOutcome", "apply_event", "load_recipe", "reapply", "replay_to", "replica",
           "verify_state"]

@dataclass(frozen=True)
class Divergence:
    seq: int
    kind: str
    parts: list[str]  # which state groups differ

    def __str__(self) -> str:
        return f"seq {self.seq} ({self.kind}): replayed state differs in {', '.join(self.parts) or 'the whole state'}"


def _blob_tensors(exp: Experiment, event: EventRow, prefix: str) -> dict[str, torch.Tensor]:
    blobs = event.payload.get("blobs", {})
    return {name[len(prefix):]: decode_tensor(exp.store.blobs.get(check_hash(h)))
            for name, h in blobs.items() if name.startswith(prefix)}


def _deny_allow_ids(exp: Experiment, event: EventRow) -> list[int]:
    args = event.payload.get("args", {})
    if "ids" in args:
        return list(args["ids"])
    ids = _blob_tensors(exp, event, "ids")
    if "" not in ids:
        raise ReplayError(f"event {event.seq} ({event.kind}) has no recorded ids")
    return ids[""].tolist()


def apply_event(exp: Experiment, event: EventRow) -> None:
    """Re-execute one recorded event on ``exp`` without recording it again."""
    kind, p = event.kind, event.payload
    exp._recorder.muted += 1
    try:
        if kind == "train":
            sampler = {k: v.numpy() for k, v in _blob_tensors(exp, event, "sampler/").items()}
            exp._train_sampler.load_state_arrays(sampler)
            exp._train_iter = None
            restore_rng(_blob_tensors(exp, event, "rng/"))
            exp._train_loop(int(p["steps"]))
        elif kind == "eval":
            exp._eval_loop(None if p.get("full") else int(p["steps"]))
        elif kind in METHOD_OF_KIND:
            getattr(exp.model, METHOD_OF_KIND[kind])(**p["args"])
        elif kind in ("deny", "allow"):
            ds = exp._train_ds if p.get("split", "train") == "train" else exp._eval_ds
            ds.apply_recorded(kind, {"ids": _deny_allow_ids(exp, event)})
            exp._reset_iterators()
        elif kind in ("load", "create"):
            manifest = p["manifest"] if kind == "load" else p["initial"]
            tensors, meta = read_manifest(exp, manifest)
            exp._restore(tensors, meta)
            exp.chkpt_manager.head = p.get("checkpoint_id")
        elif kind == "dump":
            exp.chkpt_manager.head = p["checkpoint_id"]
        elif kind == "resume":
            if p.get("not_restored"):
                tensors, meta = read_manifest(exp, p["manifest"])
                exp._restore(tensors, meta)
                replayed = exp.store.events(exp._experiment_id)
                for e in (e for e in replayed if e.seq in set(p.get("replayed", []))):
                    apply_event(exp, e)
            exp.chkpt_manager.head = p.get("checkpoint_id")
        # other kinds (snapshot, unknown future kinds) change no state
    finally:
        exp._recorder.muted -= 1


def verify_state(exp: Experiment, event: EventRow) -> Divergence | None:
    """Compare the live state with the fingerprint recorded with ``event``."""
    if event.state_hash is None:
        return None
    digest, parts = exp._recorder.state_fingerprint()
    if digest == event.state_hash:
        return None
    recorded: dict[str, Any] = event.payload.get("state", {})
    differs = sorted(k for k, v in parts.items() if recorded.get(k) != v)
    return Divergence(event.seq, event.kind, differs)


@dataclass
class ReplayOutcome:
    """What a replay did: the seqs re-applied and verified, and where it stopped (if it did)."""

    replayed: list[int]
    not_restored: list[int]
    divergence: Divergence | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.not_restored


def reapply(exp: Experiment, events: Sequence[EventRow], *, strict: bool = False) -> ReplayOutcome:
    """Apply ``events`` in order, verifying each fingerprint.

    With ``strict`` a divergence or failure raises :class:`ReplayError`; otherwise
    replay stops there and the remaining seqs are reported as not restored.
    """
    done: list[int] = []
    for i, event in enumerate(events):
        rest = [ev.seq for ev in events[i:]]
        try:
            apply_event(exp, event)
        except WeightsLabError as e:
            if strict:
                raise ReplayError(f"replay failed at seq {event.seq} ({event.kind}): {e}") from e
            return ReplayOutcome(done, rest, error=f"seq {event.seq} ({event.kind}): {e}")
        div = verify_state(exp, event)
        if div is not None:
            if strict:
                raise ReplayError(f"replay diverged at {div}")
            return ReplayOutcome(done, rest, divergence=div)
        done.append(event.seq)
    return ReplayOutcome(done, [])


# -- replaying a stored experiment (the tools' entry point) ---------------------------------------

_RECIPE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_recipe(recipe: str) -> tuple[Any, Any, Any]:
    """Import ``"package.module:function"`` and call it: it returns (model, train_dataset, eval_dataset).

    Raises:
        ReplayError: malformed name, import failure, or a function that returns something else.
    """
    if not isinstance(recipe, str) or not _RECIPE.match(recipe):
        raise ReplayError(f"recipe {recipe!r} is not of the form 'package.module:function'")
    module_name, func_name = recipe.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise ReplayError(f"cannot import recipe {recipe!r}: {e}. Install the package that defines it, "
                          "or pass --recipe with another one") from e
    built = func()
    if not (isinstance(built, tuple) and len(built) == 3):
        raise ReplayError(f"recipe {recipe!r} must return (model, train_dataset, eval_dataset), got {type(built)}")
    return built


def _optimizer_class(qualified: str) -> type[torch.optim.Optimizer]:
    module_name, _, cls_name = qualified.rpartition(".")
    if not module_name.startswith("torch.optim"):
        raise ReplayError(f"the experiment used optimizer {qualified}; pass optimizer_class= to replay it")
    cls = getattr(importlib.import_module(module_name), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ReplayError(f"optimizer {qualified} is not available in this torch")
    return cls


def replica(store: Any, name: str, *, model: Any = None, train_dataset: Any = None, eval_dataset: Any = None,
            recipe: str | None = None, device: str = "cpu",
            optimizer_class: type[torch.optim.Optimizer] | None = None) -> Experiment:
    """A detached, read-only copy of a stored experiment's runtime, for replay.

    The model and datasets come from the caller, or from ``recipe`` (default: the recorded one).
    """
    from weightslab.experiment.experiment import Experiment
    from weightslab.experiment.resume import check_same_data
    from weightslab.history.store import Store

    store = store if isinstance(store, Store) else Store.open(store)
    row = store.get_experiment(name)
    recorded = row.config
    if model is None:
        recipe = recipe or row.recipe
        if not recipe:
            raise ReplayError(f"experiment {name!r} recorded no recipe: pass the model and datasets, or a recipe "
                              "('package.module:function')")
        model, train_dataset, eval_dataset = load_recipe(recipe)
    cfg = recorded.get("config", {})
    exp = Experiment(
        model, optimizer_class or _optimizer_class(recorded["optimizer_class"]), train_dataset, eval_dataset,
        device=device, learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"], name=name, store=store,
        seed=cfg["seed"], eval_every=cfg.get("eval_every"), eval_batch_size=cfg.get("eval_batch_size"),
        num_workers=cfg.get("num_workers", 0), optimizer_kwargs=cfg.get("optimizer_kwargs"), progress=False,
        _replica=True,
    )
    check_same_data(exp, recorded)
    return exp


def replay_to(exp: Experiment, seq: int | None = None, *, from_start: bool = False) -> ReplayOutcome:
    """Rebuild ``exp`` (a replica) at event ``seq`` (default: the last): nearest recorded state, then replay.

    Raises:
        ReplayError: ``seq`` outside the log (the message gives the range).
    """
    from weightslab.experiment.resume import manifest_of_event

    events = exp.store.events(exp.experiment_id)
    last = events[-1].seq if events else 0
    target = last if seq is None else seq
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= last:
        raise ReplayError(f"seq {seq!r} is outside the event log of {exp.name!r} (1..{last})")
    events = [e for e in events if e.seq <= target]
    base_i = 0
    if not from_start:
        base_i = max(i for i, e in enumerate(events) if e.kind in ("create", "dump", "load"))
    base = events[base_i]
    manifest, checkpoint_id = manifest_of_event(base)
    tensors, meta = read_manifest(exp, manifest)
    exp._restore(tensors, meta)
    exp.chkpt_manager.head = checkpoint_id
    div = verify_state(exp, base)
    if div is not None:
        return ReplayOutcome([], [e.seq for e in events[base_i:]], divergence=div)
    outcome = reapply(exp, events[base_i + 1:])
    outcome.replayed.insert(0, base.seq)
    return outcome
