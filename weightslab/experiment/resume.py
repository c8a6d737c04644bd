"""Reopening an experiment: check the data, restore the latest state on the current branch.

The state to resume from is the last state-setting event: the creation's
initial state, a ``dump`` (its checkpoint), a ``load`` or an earlier
``resume``. Operations recorded after it are re-executed by replay when
possible (see :mod:`weightslab.experiment.replay`); the resume itself is
recorded as a ``resume`` event so the log stays a faithful history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from weightslab.errors import ConfigurationError, IntegrityError
from weightslab.experiment.checkpoints import read_manifest

if TYPE_CHECKING:
    from weightslab.experiment.experiment import Experiment
    from weightslab.history.eventlog import EventRow

__all__ = ["ResumeReport", "base_of", "check_same_data", "resume"]


@dataclass
class ResumeReport:
    checkpoint_id: int | None  # None: the initial state
    base_seq: int
    replayed: list[int] = field(default_factory=list)
    not_restored: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        where = "the initial state" if self.checkpoint_id is None else f"checkpoint {self.checkpoint_id}"
        text = f"resumed from {where} (seq {self.base_seq})"
        if self.replayed:
            text += f", replayed events {self.replayed[0]}..{self.replayed[-1]}"
        if self.not_restored:
            text += f"; events not restored: {self.not_restored}"
        return text


def check_same_data(exp: Experiment, recorded: dict[str, Any]) -> None:
    """Refuse datasets (and an optimizer class) that differ from the ones the experiment was recorded with."""
    want_opt = recorded.get("optimizer_class")
    have_opt = f"{type(exp.optimizer).__module__}.{type(exp.optimizer).__name__}"
    if want_opt is not None and want_opt != have_opt:
        raise ConfigurationError(
            f"experiment {exp.name!r} was recorded with optimizer {want_opt}, not {have_opt}; reopen it with "
            f"optimizer_class={want_opt.rpartition('.')[2]}, or use a new name"
        )
    for split, ds in (("train", exp._train_ds), ("eval", exp._eval_ds)):
        want = recorded.get(f"{split}_fingerprint")
        have = ds.fingerprint()
        if want is not None and want != have:
            raise ConfigurationError(
                f"experiment {exp.name!r} was recorded with a different {split} dataset "
                f"(fingerprint {want}, now {have}); reopen it with the same data, or use a new name"
            )


def base_of(events: list[EventRow]) -> tuple[int, EventRow]:
    """Index of the last state-setting event (create, dump, load, resume) and that event."""
    for i in range(len(events) - 1, -1, -1):
        if events[i].kind in ("create", "dump", "load", "resume"):
            return i, events[i]
    raise ConfigurationError("the experiment's log has no creation event; the store is damaged")


def manifest_of_event(event: EventRow) -> tuple[str, int | None]:
    p = event.payload
    if event.kind == "create":
        return p["initial"], None
    return p["manifest"], p.get("checkpoint_id")


def resume(exp: Experiment) -> ResumeReport:
    """Restore the latest state of ``exp`` from the store and record a ``resume`` event.

    Raises:
        IntegrityError: the event log's hash chain does not verify (an edited, deleted or
            reordered event): nothing is replayed from a history that cannot be trusted.
    """
    from weightslab.experiment import replay

    chain = exp.store.verify_chain(exp._experiment_id)
    if not chain.ok:
        raise IntegrityError(
            f"experiment {exp.name!r}: its event log fails verification at seq {chain.first_bad_seq} "
            f"({chain.reason}); refusing to resume from it. Inspect it with `weightslab audit {exp.name}`."
        )
    events = exp.store.events(exp._experiment_id)
    i, base = base_of(events)
    manifest, checkpoint_id = manifest_of_event(base)
    tensors, meta = read_manifest(exp, manifest)
    exp._restore(tensors, meta)
    exp.chkpt_manager.head = checkpoint_id
    later = events[i + 1:]
    base_seq = base.seq
    if base.kind == "resume":
        # A resume event names its own base's manifest: its state is that manifest plus the events it
        # re-applied, so re-apply those again (and the resume itself, to verify its fingerprint).
        by_seq = {e.seq: e for e in events}
        later = [by_seq[s] for s in base.payload.get("replayed", [])] + [base, *later]
        base_seq = base.payload.get("base_seq", base.seq)
    report = ResumeReport(checkpoint_id, base_seq)
    outcome = replay.reapply(exp, later)
    report.replayed, report.not_restored = outcome.replayed, outcome.not_restored
    if outcome.not_restored:
        import warnings

        why = outcome.divergence or outcome.error
        warnings.warn(f"experiment {exp.name!r}: events {outcome.not_restored} could not be re-applied ({why}); "
                      f"continuing from seq {outcome.replayed[-1] if outcome.replayed else base.seq}",
                      stacklevel=3)
    exp._recorder.append("resume", {
        "checkpoint_id": checkpoint_id, "manifest": manifest, "base_seq": base_seq,
        "replayed": report.replayed, "not_restored": report.not_restored,
        "replayed_ops": [f"replayed seq {s}" for s in report.replayed],
    }, flush_all=True)
    return report
