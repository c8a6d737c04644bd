"""Replay: rebuild a recorded state by re-executing events, verifying each fingerprint.

State is a fold over events, and this is the one engine that folds: the replay
tools use it to rebuild any seq, and reopening an experiment uses it to come back
to its latest state. It restores the nearest restorable state (see
:meth:`weightslab.history.log.Log.plan`), then re-executes each later event with
recording muted: training re-runs from the sampler and RNG state stored with its
event, edits call the same operation with the recorded arguments (and seed),
deny/allow re-apply the recorded ids. After each event the state's fingerprint is
compared with the recorded one; the first mismatch stops the replay and says which
part (model, optim, ledger, sampler, rng) differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from weightslab.errors import ConfigurationError, IntegrityError, ReplayError, WeightsLabError
from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    EditEvent,
    Evaluated,
    ExperimentCreated,
    ExperimentResumed,
    HyperparametersSet,
    SampleEvent,
    StepsTrained,
)
from weightslab.experiment import environment, hyperparameters
from weightslab.experiment.checkpoints import CheckpointManager, read_state
from weightslab.experiment.loops import eval_loop, train_loop
from weightslab.experiment.recorder import Recorder
from weightslab.experiment.rng import restore_rng
from weightslab.experiment.runtime import Runtime
from weightslab.experiment.statistics import Statistics
from weightslab.experiment.training import import_step
from weightslab.history.blobs import check_hash
from weightslab.history.log import Log, LogEntry, RestorePlan, walk
from weightslab.history.tensorcodec import decode_tensor

__all__ = ["Divergence", "ReplayOutcome", "Replayer", "ResumeReport", "check_same_data", "reopen"]


@dataclass(frozen=True)
class Divergence:
    seq: int
    kind: str
    parts: list[str]  # which state groups differ

    def __str__(self) -> str:
        return f"seq {self.seq} ({self.kind}): replayed state differs in {', '.join(self.parts) or 'the whole state'}"


@dataclass
class ReplayOutcome:
    """What a replay did: the state it started from (``base_seq``), the seqs re-executed (or, for a resume,
    verified) and found to match, and where it stopped, if it did."""

    base_seq: int
    replayed: list[int] = field(default_factory=list)
    not_restored: list[int] = field(default_factory=list)
    divergence: Divergence | None = None
    error: str | None = None
    forced: list[str] = field(default_factory=list)  # environment differences accepted (force=True)
    skipped: list[int] = field(default_factory=list)  # own-loop calls restored from the checkpoint after them
    noted: list[str] = field(default_factory=list)  # differences that may matter (see weightslab.experiment.environment)

    @property
    def ok(self) -> bool:
        return not self.not_restored

    @property
    def reached(self) -> int:
        """The seq whose state the replay rebuilt and verified."""
        return self.replayed[-1] if self.replayed else self.base_seq


def _opaque(entry: LogEntry) -> bool:
    """A training call replay cannot re-execute (the user's own loop, without a named step)."""
    return isinstance(entry.event, StepsTrained) and not entry.event.replayable


class Replayer:
    """Re-executes one experiment's recorded events on its runtime (nothing is recorded again).

    Each event runs with the settings it was recorded with pinned (threads, deterministic flags, matmul
    precision; :mod:`~weightslab.experiment.environment`). Events recorded with another torch version or
    device are refused, naming the difference, unless ``force`` accepts the risk.
    """

    def __init__(self, rt: Runtime, recorder: Recorder, statistics: Statistics,
                 checkpoints: CheckpointManager, *, force: bool = False) -> None:
        self._rt = rt
        self._recorder = recorder
        self._statistics = statistics
        self._checkpoints = checkpoints
        self.force = force
        self._pin: environment.Pinned | None = None

    def log(self) -> Log:
        """The experiment's log; the facts of its creation that are settings, not state, are applied."""
        log = walk(self._rt.store, self._rt.store.get_experiment(self._rt.name))
        created = log.entries[0].event if log.entries else None
        if isinstance(created, ExperimentCreated):
            self._rt.fingerprint_version = created.fingerprint
            for split in self._rt.splits:
                split.ledger.stats.labels_known = created.labels_known
        return log

    def _check_environment(self, entries: Sequence[LogEntry], outcome: ReplayOutcome) -> None:
        """Refuse events recorded where replay cannot pin the difference (unless forced); note the rest."""
        here = environment.current(self._rt.device)
        refused: dict[str, list[int]] = {}
        for entry in entries:
            found = environment.compare(entry.environment, here)
            for what in found.refused:
                refused.setdefault(what, []).append(entry.seq)
            outcome.noted += [n for n in found.noted if n not in outcome.noted]
        if not refused:
            return
        what = "; ".join(f"{d} for seqs {seqs[0]}..{seqs[-1]}" for d, seqs in refused.items())
        if not self.force:
            raise ReplayError(
                f"experiment {self._rt.name!r} was recorded in another environment: {what}. Replay cannot set "
                "these back, so it may not reproduce the log: run it where it was recorded, or accept the risk "
                "with force=True (weightslab replay --force), which the resume event records")
        outcome.forced += list(refused)

    # -- one event -------------------------------------------------------------------------------------
    def restore(self, manifest: str, checkpoint_id: int | None) -> None:
        """Restore the state a manifest names (all blobs verified before anything changes)."""
        found, tensors = read_state(self._rt.store, manifest)
        self._statistics.keep_history()
        self._rt.restore(tensors, found.meta)
        self._checkpoints.head = checkpoint_id

    def apply(self, entry: LogEntry, log: Log) -> None:
        """Re-execute one recorded event without recording it again."""
        rt, event = self._rt, entry.event
        if self._pin is not None:
            self._pin.to(entry.environment)
        self._recorder.muted += 1
        try:
            if isinstance(event, StepsTrained):
                if not event.replayable:
                    raise ReplayError(f"seq {entry.seq} ran the user's own training loop, which replay cannot "
                                      "re-execute; its state can be restored from a later checkpoint only")
                rt.train.sampler.load_state_arrays({k: v.numpy() for k, v in self._blobs(entry, "sampler/").items()})
                rt.batches.drop()
                restore_rng(self._blobs(entry, "rng/"))
                train_loop(rt, event.steps, import_step(event.step) if event.step else None)
            elif isinstance(event, HyperparametersSet):
                hyperparameters.apply(rt, event.values())
            elif isinstance(event, Evaluated):
                eval_loop(rt, None if event.full else event.steps)
            elif isinstance(event, EditEvent):
                getattr(rt.model, event.METHOD)(**event.call_args())
            elif isinstance(event, SampleEvent):
                rt.split(event.split).ledger.apply_recorded(event.KIND, {"ids": self._ids(entry)})
                rt.batches.reset()
            elif isinstance(event, ExperimentCreated | CheckpointLoaded):
                self.restore(event.restored_manifest(), getattr(event, "checkpoint_id", None))
            elif isinstance(event, CheckpointDumped):
                self._checkpoints.head = event.checkpoint_id
            elif isinstance(event, ExperimentResumed):
                self.restore(event.manifest, event.checkpoint_id)
                for redo in log.redo_of(entry):
                    if not isinstance(redo.event, ExperimentResumed):  # verified, not re-executed
                        self.apply(redo, log)
        finally:
            self._recorder.muted -= 1

    def verify(self, entry: LogEntry) -> Divergence | None:
        """Compare the live state with the fingerprint recorded with ``entry``."""
        if entry.state_hash is None:
            return None
        fp = self._recorder.fingerprint()
        if fp.digest == entry.state_hash:
            return None
        recorded = entry.event.state
        return Divergence(entry.seq, entry.kind, sorted(k for k, v in fp.groups.items() if recorded.get(k) != v))

    def _blobs(self, entry: LogEntry, prefix: str) -> dict[str, torch.Tensor]:
        blobs = self._rt.store.blobs
        return {name[len(prefix):]: decode_tensor(blobs.get(check_hash(h)))
                for name, h in entry.event.blobs.items() if name.startswith(prefix)}

    def _ids(self, entry: LogEntry) -> list[int]:
        event = entry.event
        assert isinstance(event, SampleEvent)
        if event.ids is not None:
            return list(event.ids)
        ids = self._blobs(entry, "ids")
        if "" not in ids:
            raise ReplayError(f"event {entry.seq} ({entry.kind}) has no recorded ids")
        return ids[""].tolist()

    # -- a run of events -------------------------------------------------------------------------------
    def rebuild(self, plan: RestorePlan, log: Log, *, strict: bool = False) -> ReplayOutcome:
        """Restore ``plan``'s manifest, then re-execute its events, verifying each fingerprint.

        Stops at the first event that fails or diverges (``strict``: raises :class:`ReplayError`); the
        state is then that of the failed attempt: see :meth:`back_to`.
        """
        outcome = ReplayOutcome(plan.anchor.seq)
        # a resume anchor's state is its manifest plus the events it re-executed (redo)
        after_resume = isinstance(plan.anchor.event, ExperimentResumed)
        steps = [*plan.redo, plan.anchor, *plan.then] if after_resume else [plan.anchor, *plan.then]
        executed = [e for e in steps if e is not plan.anchor and not isinstance(e.event, ExperimentResumed)]
        self._check_environment([*executed, *(r for e in plan.then for r in log.redo_of(e))], outcome)
        with environment.Pinned(self._rt.device).pinning() as pin:
            self._pin = pin
            try:
                return self._run(plan, log, steps, after_resume, outcome, strict)
            finally:
                self._pin = None

    def _run(self, plan: RestorePlan, log: Log, steps: list[LogEntry], after_resume: bool, outcome: ReplayOutcome,
             strict: bool) -> ReplayOutcome:
        self.restore(plan.manifest, plan.checkpoint_id)
        i = -1
        while i + 1 < len(steps):
            i += 1
            entry = steps[i]
            if _opaque(entry) and entry is not plan.anchor:  # the user's own loop: restore the next checkpoint
                j = next((k for k in range(i + 1, len(steps)) if isinstance(steps[k].event, CheckpointDumped)), None)
                if j is not None:
                    dump = steps[j].event
                    assert isinstance(dump, CheckpointDumped)
                    self.restore(dump.manifest, dump.checkpoint_id)
                    outcome.skipped += [s.seq for s in steps[i:j]]
                    i = j
                    entry = steps[i]
            try:
                verify_only = entry is plan.anchor or (entry in plan.redo and isinstance(entry.event,
                                                                                        ExperimentResumed))
                if not verify_only:  # the anchor's state was restored; a resume it redid is only verified
                    self.apply(entry, log)
            except WeightsLabError as e:
                if strict:
                    raise ReplayError(f"replay failed at seq {entry.seq} ({entry.kind}): {e}") from e
                outcome.not_restored = [s.seq for s in steps[i:]]
                outcome.error = f"seq {entry.seq} ({entry.kind}): {e}"
                return outcome
            div = self.verify(entry)
            if div is not None:
                if strict:
                    raise ReplayError(f"replay diverged at {div}")
                outcome.not_restored = [s.seq for s in steps[i:]]
                outcome.divergence = div
                return outcome
            if entry is not plan.anchor or after_resume:
                outcome.replayed.append(entry.seq)
        return outcome

    def back_to(self, plan: RestorePlan, log: Log, verified: Sequence[int]) -> None:
        """Rebuild the last verified state of a replay that stopped: the manifest, then the ``verified`` seqs.

        Raises:
            ReplayError: an event that verified before does not verify again (non-deterministic code).
        """
        with environment.Pinned(self._rt.device).pinning() as pin:
            self._pin = pin
            try:
                self.restore(plan.manifest, plan.checkpoint_id)
                for seq in verified:
                    entry = log.entry(seq)
                    if not isinstance(entry.event, ExperimentResumed):
                        self.apply(entry, log)
                    div = self.verify(entry)
                    if div is not None:
                        raise ReplayError(f"seq {seq} verified once and not the second time ({div}): the "
                                          "training code is not deterministic on this machine")
            finally:
                self._pin = None

    def rebuild_latest(self, seq: int) -> None:
        """Put the live state back to the state after event ``seq`` (an operation failed before its event was
        written): the nearest recorded state, then the events after it, every fingerprint verified. The
        per-pass rows of the undone work are dropped (the log holds only what was recorded).

        Raises:
            ReplayError: the state could not be rebuilt (the store cannot be read, or replay diverges).
        """
        log = self.log()
        self._statistics.discard_history()
        try:
            self.rebuild(log.plan(seq), log, strict=True)
        finally:
            self._statistics.discard_history()


# -- reopening an experiment -----------------------------------------------------------------------------

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


def check_same_data(rt: Runtime, recorded: dict[str, Any]) -> None:
    """Refuse datasets (and an optimizer class) other than those the experiment was recorded with.

    Raises:
        ConfigurationError: naming what differs and what to do.
    """
    want_opt = recorded.get("optimizer_class")
    have_opt = f"{type(rt.optimizer).__module__}.{type(rt.optimizer).__name__}"
    if want_opt is not None and want_opt != have_opt:
        raise ConfigurationError(
            f"experiment {rt.name!r} was recorded with optimizer {want_opt}, not {have_opt}; reopen it with "
            f"optimizer_class={want_opt.rpartition('.')[2]}, or use a new name"
        )
    for split in rt.splits:
        want = recorded.get(f"{split.name}_fingerprint")
        have = split.ledger.fingerprint()
        if want is not None and want != have:
            raise ConfigurationError(
                f"experiment {rt.name!r} was recorded with a different {split.name} dataset "
                f"(fingerprint {want}, now {have}); reopen it with the same data, or use a new name"
            )
    recorded_config = recorded.get("config", {})
    for option, default in (("step", None), ("grad_clip", None), ("accumulate", 1), ("amp", None),
                            ("scheduler", None), ("compile", None)):
        want, have = recorded_config.get(option, default), getattr(rt.config, option)
        if want != have:
            raise ConfigurationError(
                f"experiment {rt.name!r} was recorded with {option}={want!r}, not {have!r}: its events replay only "
                f"with the same training; reopen it with {option}={want!r}, or use a new name")


def reopen(rt: Runtime, replayer: Replayer, recorder: Recorder) -> ResumeReport:
    """Bring a reopened experiment to its latest recorded state and record a ``resume`` event.

    The latest restorable state is restored and the events after it re-executed. If one of them cannot
    be reproduced, the state goes back to the last one that was verified, and the ``resume`` event says
    which events were restored and which not (with a warning), so the log stays replayable: its state is
    its manifest plus the events it lists as replayed.

    Raises:
        IntegrityError: the event log's hash chain does not verify (an edited, deleted or reordered
            event): nothing is replayed from a history that cannot be trusted.
    """
    chain = rt.store.verify_chain(rt.experiment_id)
    if not chain.ok:
        raise IntegrityError(
            f"experiment {rt.name!r}: its event log fails verification at seq {chain.first_bad_seq} "
            f"({chain.reason}); refusing to resume from it. Inspect it with `weightslab audit {rt.name}`."
        )
    log = replayer.log()
    problems = log.checkpoint_problems(rt.store.checkpoints(rt.experiment_id))
    if problems:
        raise IntegrityError(f"experiment {rt.name!r}: {problems[0]}; refusing to resume from it. Inspect it with "
                             f"`weightslab audit {rt.name}`.")
    plan = log.plan()
    outcome = replayer.rebuild(plan, log)
    if outcome.not_restored:
        replayer.back_to(plan, log, outcome.replayed)
        why = outcome.divergence or outcome.error
        warnings.warn(f"experiment {rt.name!r}: events {outcome.not_restored} could not be re-applied ({why}); "
                      f"continuing from the state after seq {outcome.reached}", stacklevel=3)
    recorder.append(ExperimentResumed(
        checkpoint_id=plan.checkpoint_id, manifest=plan.manifest, base_seq=plan.manifest_seq,
        replayed=tuple(outcome.replayed), not_restored=tuple(outcome.not_restored), restored_seq=outcome.reached,
        environment=environment.current(rt.device), forced=tuple(outcome.forced),
    ), flush_all=True)
    return ResumeReport(plan.checkpoint_id, plan.manifest_seq, list(outcome.replayed), list(outcome.not_restored))
