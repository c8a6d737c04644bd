"""Audit: prove a recorded history, and list what is in it.

``audit_experiment`` checks the two things a history rests on:

- the **event chain**: every event's hash covers its content and its
  predecessor's hash, so an edited, deleted or reordered event breaks it at
  the first bad seq;
- the **blobs**: every manifest the log names (the initial state, each
  checkpoint, each state loaded), every tensor blob a manifest names, every
  blob an event payload names and every snapshot must exist and hash to its
  name; and the ``checkpoints`` table must agree with the ``dump`` events
  (it is what ``load`` reads, and it is not covered by the chain).

``experiments_frame`` and ``events_frame`` are the listings behind
``weightslab experiments`` and ``weightslab events``: who did what, when,
with which code (``experiments_rows`` and ``events_rows`` the same without
pandas, for the command line). Nothing here imports torch or writes to the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, cast, select

from weightslab.errors import EventPayloadError, IntegrityError, StoreError
from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    ExperimentCreated,
    ExperimentResumed,
    StepsTrained,
    UndecodedEvent,
)
from weightslab.history.blobs import check_hash
from weightslab.history.eventlog import ChainReport
from weightslab.history.listings import (
    events_rows,
    experiments_rows,
    log_rows,
)
from weightslab.history.log import Log, LogEntry, walk
from weightslab.history.manifest import FORMAT, Manifest, parse_manifest, uses_fast_digests
from weightslab.history.schema import Checkpoint, Event, Snapshot
from weightslab.history.store import Store

if TYPE_CHECKING:  # the frames import pandas when asked for; the rows never do
    import pandas as pd

__all__ = [
    "AuditReport",
    "StoreAuditReport",
    "audit_experiment",
    "audit_store",
    "events_frame",
    "events_rows",
    "experiments_frame",
    "experiments_rows",
    "log_frame",
    "log_rows",
]


# -- listings ------------------------------------------------------------------------

def experiments_frame(store: Store) -> pd.DataFrame:
    """One row per experiment: id, name, creation time, number of events and checkpoints.

    Example:
        >>> experiments_frame(Store.open("./store"))[["name", "events", "checkpoints"]]
    """
    frame = experiments_rows(store).to_frame()
    return frame.astype({"experiment_id": "int64", "events": "int64", "checkpoints": "int64"})


def events_frame(store: Store, name: str, from_seq: int | None = None, to_seq: int | None = None) -> pd.DataFrame:
    """The event log of experiment ``name``: seq, time, kind, one-line summary, who, code version.

    Also the hashes and the payload (a dict per row), for machine-readable output.

    Raises:
        UnknownExperimentError: no such experiment (the message lists those that exist).
        ConfigurationError: ``from_seq``/``to_seq`` outside the log (the message gives its range).

    Example:
        >>> events_frame(store, "x0", from_seq=3)[["seq", "kind", "summary"]]
    """
    return events_rows(store, name, from_seq, to_seq).to_frame()


def log_frame(entries: Sequence[LogEntry] | Log) -> pd.DataFrame:
    """Walked events as a DataFrame: seq, time, kind, one-line summary, who, code version, hashes and the
    payload (a dict per row), as ``exp.events()`` and ``weightslab events`` show them."""
    return log_rows(entries).to_frame()


# -- audit -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditReport:
    """The verdict on one experiment's history.

    ``ok`` is true when the chain verifies up to the head anchored on the
    experiment's row, every blob the history names is present and intact, and
    (when one was expected) the log still holds the expected head. Otherwise
    ``first_bad_seq`` is the first event that fails the chain, ``bad_blob`` the
    first missing or damaged blob and ``bad_blob_role`` what it was (e.g.
    ``checkpoint 1 (seq 7): tensor model/layer0.weight``). ``head_hash`` is the
    hash of the latest event: record it elsewhere (like a git commit id) and pass
    it back as ``expect_head`` to prove that nothing up to it was cut or changed.
    """

    experiment: str
    events: int
    checkpoints: int
    blobs_checked: int
    chain_ok: bool
    first_bad_seq: int | None = None
    bad_blob: str | None = None
    bad_blob_role: str | None = None
    problems: tuple[str, ...] = ()
    head_seq: int = 0
    head_hash: str | None = None
    expected_head: str | None = None
    not_reexecutable: tuple[int, ...] = ()  # training calls of the user's own loop (replay restores after them)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render_text(self) -> str:
        head = (f"experiment {self.experiment!r}: {self.events} events, {self.checkpoints} checkpoints, "
                f"{self.blobs_checked} blobs checked")
        anchor = f"    head: seq {self.head_seq} {self.head_hash or '(none)'}"
        if self.not_reexecutable:
            anchor += (f"\n    not re-executable by replay (own training loops): seqs {list(self.not_reexecutable)}; "
                       "replay restores the checkpoint after each")
        if self.ok:
            proof = f"; the log holds the expected head {self.expected_head[:12]}" if self.expected_head else ""
            return f"OK  {head}: hash chain and blobs verified{proof}\n{anchor}"
        return "\n".join([f"BAD {head}", *(f"    {p}" for p in self.problems), anchor])

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "ok": self.ok, "events": self.events,
                "checkpoints": self.checkpoints, "blobs_checked": self.blobs_checked, "chain_ok": self.chain_ok,
                "first_bad_seq": self.first_bad_seq, "bad_blob": self.bad_blob,
                "bad_blob_role": self.bad_blob_role, "problems": list(self.problems), "head_seq": self.head_seq,
                "head_hash": self.head_hash, "expected_head": self.expected_head,
                "not_reexecutable": list(self.not_reexecutable)}


@dataclass(frozen=True)
class StoreAuditReport:
    """The verdicts on every experiment of a store."""

    store: str
    reports: tuple[AuditReport, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    def render_text(self) -> str:
        lines = [r.render_text() for r in self.reports] or [f"no experiments in {self.store}"]
        bad = [r.experiment for r in self.reports if not r.ok]
        verdict = (f"store {self.store}: {len(self.reports)} experiment(s) verified" if not bad
                   else f"store {self.store}: {len(bad)} of {len(self.reports)} experiment(s) fail the audit: "
                        + ", ".join(repr(b) for b in bad))
        return "\n".join([*lines, verdict])

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "experiments": [r.to_dict() for r in self.reports]}


def audit_store(store: Store) -> StoreAuditReport:
    """Audit every experiment of ``store`` (see :func:`audit_experiment`).

    Example:
        >>> audit_store(Store.open("./store")).ok
        True
    """
    return StoreAuditReport(store.describe(), tuple(audit_experiment(store, e.name)
                                                    for e in store.list_experiments()))


def audit_experiment(store: Store, name: str, *, expect_head: str | None = None) -> AuditReport:
    """Verify experiment ``name``'s hash chain, its head, and every blob its history names.

    ``expect_head``: the hash of an event the log must still hold (a head recorded earlier, e.g.
    printed by a previous audit): a log cut before it, or rewritten, fails.

    Nothing is written. A damaged store gives a report with ``ok == False``
    (naming the first bad seq and the first bad blob), not an exception.

    Raises:
        UnknownExperimentError: no such experiment (the message lists those that exist).

    Example:
        >>> report = audit_experiment(store, "x0")
        >>> report.ok, report.first_bad_seq, report.bad_blob_role
        (True, None, None)
    """
    exp = store.get_experiment(name)
    problems: list[str] = []
    chain, log = _read_log(store, exp)
    if not chain.ok:
        problems.append(f"hash chain broken at seq {chain.first_bad_seq}: {chain.reason}")
    if expect_head is not None and (log is None or all(e.record.hash != expect_head for e in log)):
        problems.append(f"the log holds no event with the expected head hash {expect_head}: it was cut before "
                        "that event or rewritten since (restore the store from a backup)")
    with store.reading() as conn:
        ckpts = conn.execute(select(Checkpoint.__table__).where(Checkpoint.experiment_id == exp.experiment_id)
                             .order_by(Checkpoint.checkpoint_id)).all()
        snaps = conn.execute(select(Snapshot.__table__).where(Snapshot.experiment_id == exp.experiment_id)
                             .order_by(Snapshot.snapshot_id)).all()
    checker = _BlobChecker(store)
    bad: tuple[str, str] | None = None
    if log is None:
        problems.append("blob checks skipped: the event log cannot be read")
    else:
        for role, digest, problem in _walk(log, ckpts, snaps, checker):
            if problem:
                problems.append(f"{role}: {problem}")
                if digest is not None:
                    bad = (digest, role)
                    break
    return AuditReport(
        experiment=name, events=chain.events, checkpoints=len(ckpts), blobs_checked=len(checker.seen),
        chain_ok=chain.ok, first_bad_seq=chain.first_bad_seq, bad_blob=bad[0] if bad else None,
        bad_blob_role=bad[1] if bad else None, problems=tuple(problems), head_seq=chain.head_seq,
        head_hash=chain.head_hash, expected_head=expect_head,
        not_reexecutable=tuple(e.seq for e in log if isinstance(e.event, StepsTrained) and not e.event.replayable)
        if log is not None else (),
    )


def _read_log(store: Store, exp: Any) -> tuple[ChainReport, Log | None]:
    """The chain's verdict and the walked log (None, and a failed verdict naming the seq, when an event's
    payload is not JSON any more or does not decode into its event class)."""
    try:
        chain = store.verify_chain(exp.experiment_id)
        log = walk(store, exp, strict=False)
    except (ValueError, EventPayloadError) as e:  # a payload that is not a JSON object any more
        return ChainReport(False, store.last_seq(exp.experiment_id), _first_undecodable_seq(store, exp.experiment_id),
                           f"its payload cannot be decoded ({e})"), None
    bad = next((e for e in log if isinstance(e.event, UndecodedEvent)), None)
    if bad is None:
        return chain, log
    if chain.ok or (chain.first_bad_seq or 0) > bad.seq:
        chain = ChainReport(False, chain.events, bad.seq, f"its payload does not decode ({bad.event.summary()})")
    return chain, None


def _first_undecodable_seq(store: Store, experiment_id: int) -> int | None:
    ev = Event.__table__
    with store.reading() as conn:
        rows = conn.execute(select(ev.c.seq, cast(ev.c.payload, Text)).where(ev.c.experiment_id == experiment_id)
                            .order_by(ev.c.seq)).all()
    for seq, payload in rows:
        if isinstance(payload, str | bytes):
            try:
                if not isinstance(json.loads(payload), dict):
                    return int(seq)
            except ValueError:
                return int(seq)
    return None


@dataclass
class _BlobChecker:
    """Reads each blob once (verifying its hash) and remembers the verdict."""

    store: Store
    seen: dict[str, str | None] = field(default_factory=dict)  # hash -> problem (None: intact)
    manifests: dict[str, Manifest] = field(default_factory=dict)  # hash -> the manifest, walked
    fast: dict[str, str] = field(default_factory=dict)  # tensor blob hash -> its fast digest

    def check(self, digest: Any) -> str | None:
        """What is wrong with blob ``digest`` (None: present and intact)."""
        if isinstance(digest, str) and digest in self.seen:
            return self.seen[digest]
        return self.read(digest)[0]

    def check_tensor(self, digest: Any) -> str | None:
        """:meth:`check`, keeping the fast digest of the tensor it holds (a version-2 fingerprint needs it)."""
        if isinstance(digest, str) and digest in self.seen and (digest in self.fast or self.seen[digest] is not None):
            return self.seen[digest]  # known: damaged, or intact with its digest kept
        problem, data = self.read(digest)
        if data is not None:  # numpy is imported only where tensors are read
            from weightslab.history.fasthash import encoded_tensor_digest

            try:
                self.fast[digest] = encoded_tensor_digest(data)
            except IntegrityError as e:
                problem = self.seen[digest] = f"not a tensor ({e})"
        return problem

    def prefetch(self, digests: Sequence[Any], *, tensors: bool) -> None:
        """Read and verify the blobs among ``digests`` not seen yet in one batch (one query, the files on a
        few threads), keeping each tensor's fast digest if ``tensors``. Where one is missing or damaged the
        batch is dropped: :meth:`check` then reads each on its own, to name the one at fault."""
        todo = []
        for d in dict.fromkeys(d for d in digests if isinstance(d, str)):
            try:
                if check_hash(d) not in self.seen:
                    todo.append(d)
            except IntegrityError:
                continue  # malformed: check() says so
        if len(todo) < 2:
            return
        try:
            datas = self.store.blobs.get_many(todo)
        except (StoreError, IntegrityError):
            return
        if tensors:
            from weightslab.history.fasthash import encoded_tensor_digest

        for d, data in zip(todo, datas):
            if tensors:
                try:
                    self.fast[d] = encoded_tensor_digest(data)
                except IntegrityError:
                    continue  # check_tensor() reads it again and says what it is
            self.seen[d] = None

    def read(self, digest: Any) -> tuple[str | None, bytes | None]:
        try:
            digest = check_hash(digest)
            data = self.store.blobs.get(digest)
        except StoreError as e:
            if isinstance(digest, str):
                self.seen[digest] = str(e)
            return str(e), None
        self.seen[digest] = None
        return None, data


_Finding = tuple[str, str | None, str | None]  # (what it is, blob hash or None, problem or None)


def _walk(log: Log, ckpts: Sequence[Any], snaps: Sequence[Any], checker: _BlobChecker) -> Iterator[_Finding]:
    """Every blob the history names, in log order, with what is wrong with it (if anything)."""
    for problem in log.checkpoint_problems(ckpts):
        yield problem.split(":", 1)[0], None, problem.split(": ", 1)[1]
    for e in log:
        event = e.event
        if isinstance(event, ExperimentCreated):
            yield from _manifest(f"initial state (seq {e.seq})", event.initial, None, checker)
        elif isinstance(event, CheckpointDumped):
            yield from _manifest(f"checkpoint {event.checkpoint_id} (seq {e.seq})", event.manifest, e.state_hash,
                                 checker)
        elif isinstance(event, CheckpointLoaded | ExperimentResumed):
            yield from _manifest(f"state loaded at seq {e.seq}", event.manifest, None, checker)
        for blob_name, digest in sorted(event.blobs.items()):
            yield f"seq {e.seq} ({e.kind}): blob {blob_name}", str(digest), checker.check(digest)
    for s in snaps:
        role = f"snapshot {s.snapshot_id} ({s.table_name}, seq {s.event_seq})"
        yield role, str(s.blob_hash), checker.check(s.blob_hash)


def _manifest(role: str, digest: Any, recorded: str | None, checker: _BlobChecker) -> Iterator[_Finding]:
    """The manifest blob, then every tensor blob it names (each manifest is walked once)."""
    where = f"{role}: manifest"
    manifest = checker.manifests.get(digest) if isinstance(digest, str) else None
    if manifest is None:
        problem, data = checker.read(digest)
        yield where, str(digest), problem
        if data is None:
            return
        try:
            manifest = parse_manifest(data, str(digest))
        except IntegrityError as e:
            yield where, str(digest), f"not a {FORMAT} manifest ({e})"
            return
        fast = uses_fast_digests(manifest.meta)
        checker.prefetch(list(manifest.tensors.values()), tensors=fast)
        for tensor_name, blob in sorted(manifest.tensors.items()):
            problem = checker.check_tensor(blob) if fast else checker.check(blob)
            yield f"{role}: tensor {tensor_name}", str(blob), problem
        checker.manifests[digest] = manifest
    if recorded is None:
        return
    if uses_fast_digests(manifest.meta):
        digests = {name: checker.fast.get(blob) for name, blob in manifest.tensors.items()}
        if any(d is None for d in digests.values()):
            return  # a tensor blob is missing or damaged: reported above, the state cannot be fingerprinted
        actual = manifest.fingerprint({name: str(d) for name, d in digests.items()})[0]
    else:
        actual = manifest.fingerprint()[0]
    if actual != recorded:
        yield where, str(digest), "its tensors do not hash to the state hash recorded with the event"
