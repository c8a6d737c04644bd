"""Damaged or hostile stores: refused with a clear error, never executed, never followed.

Each test records a small experiment (a checkpoint, a snapshot, training
after it), then damages its store the way a bad disk, a bad copy or an
attacker with write access to the database would: changed blob bytes, a
missing blob, a pickle where a manifest or a tensor should be, a hash that is
a path out of the store, a truncated Parquet snapshot. ``load()``, reopening,
replay and ``read_snapshot`` must refuse with a WeightsLabError that names the
problem, leave the live experiment as it was, and never unpickle anything
(``pickle`` and ``torch.load`` are booby-trapped while they run).
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_checks import changed_parts, fingerprint
from sqlalchemy import delete, insert, select, update
from torch import optim

from weightslab import Experiment
from weightslab.demo import MNISTModel, digits_datasets
from weightslab.errors import BlobNotFoundError, IntegrityError, ReplayError, WeightsLabError
from weightslab.events.codec import canonical_json
from weightslab.experiment import replica as replay
from weightslab.history.schema import Blob, BlobContent, Checkpoint, Snapshot
from weightslab.history.store import Store


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any]:
    return digits_datasets()


class Evil:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.fixture
def no_unpickling(monkeypatch) -> None:
    """Fail the test if anything calls pickle or torch.load while it runs."""
    def trap(*a: Any, **k: Any) -> Any:
        raise AssertionError("something tried to unpickle data from the store")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, trap)
    monkeypatch.setattr(torch, "load", trap)


class Recorded:
    """A recorded experiment and the means to damage its store."""

    def __init__(self, target: str, data: tuple[Any, Any], tmp: Path) -> None:
        self.target, self.data, self.tmp = target, data, tmp
        self.exp = self.open()
        exp = self.exp
        exp.train_n_steps(3)
        exp.eval_n_steps(1)
        exp.train_loader.dataset.deny_samples_with_predicate(lambda id, *a: id % 100 == 0)
        assert exp.dump() == 0
        exp.snapshot()
        exp.train_n_steps(2)
        self.store: Store = exp.store
        self.exp_id = exp.experiment_id
        self.manifest = exp.chkpt_manager.manifest_of(0)
        self.dump_seq = next(e.seq for e in self.store.events(self.exp_id) if e.kind == "dump")

    def open(self) -> Experiment:
        torch.manual_seed(0)
        train_ds, eval_ds = self.data
        return Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train_ds,
                          eval_dataset=eval_ds, device="cpu", learning_rate=1e-2, batch_size=64, name="hostile",
                          store=self.target, tensorboard_dir=str(self.tmp / "tb"), progress=False)

    # -- reading what is there
    def tensors_of(self, manifest_hash: str) -> dict[str, str]:
        return json.loads(self.store.blobs.get(manifest_hash))["tensors"]

    def manifest_doc(self) -> dict[str, Any]:
        return json.loads(self.store.blobs.get(self.manifest))

    # -- damaging it
    def rewrite_blob(self, digest: str, mutate: Callable[[bytes], bytes]) -> None:
        """Change a stored blob's bytes in place (its name no longer matches)."""
        path = self.store.blobs.path_of(digest)
        if self.store.blobs.in_file(digest):
            path.write_bytes(mutate(path.read_bytes()))
            return
        with self.store.transaction() as conn:
            data = conn.scalar(select(BlobContent.data).where(BlobContent.hash == digest))
            conn.execute(update(BlobContent).where(BlobContent.hash == digest).values(data=mutate(bytes(data))))

    def remove_blob(self, digest: str) -> None:
        path = self.store.blobs.path_of(digest)
        if self.store.blobs.in_file(digest):
            path.unlink()
            return
        with self.store.transaction() as conn:
            conn.execute(delete(BlobContent).where(BlobContent.hash == digest))

    def register_name(self, name: str) -> None:
        """Register a 'blob' under an arbitrary name (what an attacker with SQL access could do)."""
        with self.store.transaction() as conn:
            conn.execute(insert(Blob).values(hash=name, size=0, created_at=datetime.now(UTC)))

    def point_checkpoint(self, manifest_hash: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(update(Checkpoint).where(Checkpoint.experiment_id == self.exp_id,
                                                  Checkpoint.checkpoint_id == 0)
                         .values(manifest_hash=manifest_hash))

    def craft_manifest(self, **tensor_overrides: str) -> str:
        """A well-formed manifest (stored as a valid blob) whose tensors are overridden."""
        doc = self.manifest_doc()
        doc["tensors"].update(tensor_overrides)
        return self.store.blobs.put(canonical_json(doc).encode())

    def append_crafted(self, kind: str, payload: dict[str, Any]) -> None:
        """An event appended through the store API: the hash chain stays valid."""
        self.exp.flush()
        self.store.append_event(self.exp_id, kind, payload, expected_last_seq=self.store.last_seq(self.exp_id))

    # -- the four readers that must refuse
    def load_refused(self, error: type[WeightsLabError], match: str) -> None:
        """exp.load(0) raises and changes nothing."""
        before = fingerprint(self.exp)
        with pytest.raises(error, match=match):
            self.exp.load(checkpoint_id=0)
        assert not changed_parts(before, fingerprint(self.exp))

    def reopen_refused(self, error: type[WeightsLabError], match: str) -> None:
        """Reopening the experiment (a new process would do the same) raises and appends nothing."""
        self.exp.close()
        seq = self.store.last_seq(self.exp_id)
        with pytest.raises(error, match=match):
            self.open()
        assert self.store.last_seq(self.exp_id) == seq

    def replay_refused(self, error: type[WeightsLabError], match: str, seq: int | None = None) -> None:
        train_ds, eval_ds = self.data
        rep = replay.replica(self.store, "hostile", model=MNISTModel(), train_dataset=train_ds, eval_dataset=eval_ds)
        with pytest.raises(error, match=match):
            outcome = replay.replay_to(rep, seq if seq is not None else self.dump_seq)
            if outcome.error:  # a refusal reported by a non-strict replay
                raise ReplayError(outcome.error)


@pytest.fixture
def recorded(store_target, digits, tmp_path) -> Iterator[Recorded]:
    r = Recorded(store_target, digits, tmp_path)
    yield r
    r.exp.close()
    r.store.close()


def _model_blob(r: Recorded) -> str:
    return r.tensors_of(r.manifest)["model/layer0.weight"]


def test_a_blob_whose_bytes_changed_is_refused_everywhere(recorded, no_unpickling):
    recorded.rewrite_blob(_model_blob(recorded), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    recorded.load_refused(IntegrityError, "is damaged: its bytes hash to")
    recorded.replay_refused(IntegrityError, "is damaged")
    recorded.reopen_refused(IntegrityError, "is damaged")


def test_a_manifest_naming_a_missing_blob_is_refused_everywhere(recorded, no_unpickling):
    recorded.remove_blob(_model_blob(recorded))
    recorded.load_refused(BlobNotFoundError, "is missing")
    recorded.replay_refused(BlobNotFoundError, "is missing")
    recorded.reopen_refused(BlobNotFoundError, "is missing")


def test_a_missing_manifest_is_refused(recorded, no_unpickling):
    recorded.remove_blob(recorded.manifest)
    recorded.load_refused(BlobNotFoundError, recorded.manifest)
    recorded.reopen_refused(BlobNotFoundError, recorded.manifest)


def test_a_pickle_posing_as_a_manifest_is_refused_and_never_unpickled(recorded, tmp_path, no_unpickling):
    marker = tmp_path / "pwned-by-manifest"
    evil = recorded.store.blobs.put(pickle.dumps(Evil(marker)))
    recorded.point_checkpoint(evil)
    recorded.load_refused(IntegrityError, "is not JSON")
    assert not marker.exists()


def test_a_pickle_posing_as_a_tensor_is_refused_and_never_unpickled(recorded, tmp_path, no_unpickling):
    marker = tmp_path / "pwned-by-tensor"
    path = tmp_path / "evil.pt"
    with pytest.MonkeyPatch.context() as mp:  # torch.save is allowed here, only loading is trapped
        mp.undo()
        torch.save({"weight": Evil(marker)}, path)
    evil = recorded.store.blobs.put(path.read_bytes())
    recorded.point_checkpoint(recorded.craft_manifest(**{"model/layer0.weight": evil}))
    recorded.load_refused(IntegrityError, "not a WeightsLab tensor")
    assert not marker.exists()


@pytest.mark.parametrize("escape", ["../../../../etc/passwd", "../" * 3 + "a" * 55, "/etc/passwd", "0" * 63 + "/"])
def test_a_hash_that_is_a_path_is_never_followed(recorded, escape, no_unpickling):
    # in a manifest's tensor list
    recorded.point_checkpoint(recorded.craft_manifest(**{"model/layer0.weight": escape}))
    recorded.load_refused(IntegrityError, "is not a blob hash")
    # as the manifest itself, registered in the blobs table by hand
    recorded.register_name(escape)
    recorded.point_checkpoint(escape)
    recorded.load_refused(IntegrityError, "is not a blob hash")


def test_an_event_naming_a_path_as_its_manifest_is_refused_on_reopen_and_replay(recorded, no_unpickling):
    recorded.append_crafted("load", {"checkpoint_id": 0, "manifest": "../../../outside"})
    recorded.replay_refused(IntegrityError, "is not a blob hash", seq=recorded.store.last_seq(recorded.exp_id))
    recorded.reopen_refused(IntegrityError, "is not a blob hash")


def _reopen_reports_not_restored(recorded: Recorded, seq: int, match: str) -> None:
    """Reopening re-applies the events after the checkpoint: the crafted one is refused and reported."""
    recorded.exp.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = recorded.open()
    try:
        assert exp.resume_report.not_restored == [seq]
        assert any(match in str(w.message) for w in caught), [str(w.message) for w in caught]
    finally:
        exp.close()
        exp.store.close()


def test_an_event_naming_a_pickle_as_its_ids_blob_is_not_replayed(recorded, tmp_path, no_unpickling):
    marker = tmp_path / "pwned-by-event"
    evil = recorded.store.blobs.put(pickle.dumps(Evil(marker)))
    recorded.append_crafted("deny", {"args": {"mode": "ids"}, "split": "train", "blobs": {"ids": evil}})
    seq = recorded.store.last_seq(recorded.exp_id)
    recorded.replay_refused(ReplayError, "not a WeightsLab tensor", seq=seq)
    _reopen_reports_not_restored(recorded, seq, "not a WeightsLab tensor")
    assert not marker.exists()


def test_an_event_naming_a_path_as_its_blob_is_not_replayed(recorded, no_unpickling):
    train = [e for e in recorded.store.events(recorded.exp_id) if e.kind == "train"][-1]
    blobs = dict(train.payload["blobs"])
    rng_key = next(k for k in blobs if k.startswith("rng/"))
    blobs[rng_key] = "../../secret"  # the sampler's blobs are genuine: the path is what replay meets
    recorded.append_crafted("train", {**train.payload, "blobs": blobs})
    seq = recorded.store.last_seq(recorded.exp_id)
    recorded.replay_refused(ReplayError, "is not a blob hash", seq=seq)
    _reopen_reports_not_restored(recorded, seq, "is not a blob hash")


def test_a_truncated_parquet_snapshot_is_refused(recorded, no_unpickling):
    store = recorded.store
    with store.reading() as conn:
        snap_id, digest = conn.execute(select(Snapshot.snapshot_id, Snapshot.blob_hash)
                                       .where(Snapshot.experiment_id == recorded.exp_id)
                                       .order_by(Snapshot.snapshot_id)).first()
    data = store.blobs.get(digest)
    # truncated in place: its name no longer matches
    recorded.rewrite_blob(digest, lambda b: b[: len(b) // 2])
    with pytest.raises(IntegrityError, match="is damaged"):
        store.read_snapshot(snap_id)
    # truncated bytes stored under their own (valid) name and registered as the snapshot
    short = store.blobs.put(data[: len(data) // 2])
    with store.transaction() as conn:
        conn.execute(update(Snapshot).where(Snapshot.snapshot_id == snap_id).values(blob_hash=short))
    with pytest.raises(IntegrityError, match="not readable Parquet"):
        store.read_snapshot(snap_id)
    # and something that is not Parquet at all
    junk = store.blobs.put(b"PAR1" + b"\x00" * 64 + b"PAR1")
    with store.transaction() as conn:
        conn.execute(update(Snapshot).where(Snapshot.snapshot_id == snap_id).values(blob_hash=junk))
    with pytest.raises(IntegrityError, match="not readable Parquet"):
        store.read_snapshot(snap_id)


def test_an_event_edited_in_the_database_breaks_the_chain_and_the_audit_says_where(recorded):
    from weightslab.history.schema import Event

    recorded.exp.flush()
    with recorded.store.transaction() as conn:
        row = conn.execute(select(Event.payload).where(Event.experiment_id == recorded.exp_id, Event.seq == 2)).first()
        payload = dict(row.payload)
        payload["steps"] = 300
        conn.execute(update(Event).where(Event.experiment_id == recorded.exp_id, Event.seq == 2)
                     .values(payload=payload))
    report = recorded.store.verify_chain(recorded.exp_id)
    assert not report.ok and report.first_bad_seq == 2 and "edited" in report.reason
    assert not recorded.exp.verify()


def _forge(r: Recorded, edit: Callable[[dict[str, Any]], None]) -> None:
    """Point checkpoint 0 at a copy of its manifest changed by ``edit`` (every blob it names is genuine)."""
    doc = r.manifest_doc()
    edit(doc)
    r.point_checkpoint(r.store.blobs.put(json.dumps(doc).encode()))


def _put_tensor(r: Recorded, t: torch.Tensor) -> str:
    from weightslab.history.tensorcodec import encode_tensor

    return r.store.blobs.put(encode_tensor(t))


FORGERIES: dict[str, Callable[[Recorded], Callable[[dict[str, Any]], None]]] = {
    "no-optimizer-meta": lambda r: lambda d: d["meta"].pop("optimizer"),
    "tensors-not-an-object": lambda r: lambda d: d.update(tensors=[]),
    "unknown-tensor-group": lambda r: lambda d: d["tensors"].update({"evil/x": next(iter(d["tensors"].values()))}),
    "optimizer-group-count": lambda r: lambda d: d["meta"]["optimizer"]["param_groups"].append(
        d["meta"]["optimizer"]["param_groups"][0]),
    "optimizer-state-index": lambda r: lambda d: d["tensors"].update(
        {"optim/not-an-index/exp_avg": next(v for k, v in d["tensors"].items() if k.startswith("optim/"))}),
    "ledger-column-length": lambda r: lambda d: d["tensors"].update(
        {"ledger/train/prediction_loss": _put_tensor(r, torch.zeros(3, dtype=torch.float64))}),
    "sampler-permutation": lambda r: lambda d: d["tensors"].update(
        {"sampler/train/permutation": _put_tensor(r, torch.tensor([10**9]))}),
    "weight-shape": lambda r: lambda d: d["tensors"].update(
        {"model/out.bias": _put_tensor(r, torch.zeros(3, 3))}),
    "rng-state": lambda r: lambda d: d["tensors"].update(
        {next(k for k in d["tensors"] if k.startswith("rng/")): _put_tensor(r, torch.zeros(2, dtype=torch.uint8))}),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_manifest_of_genuine_blobs_is_refused_and_nothing_changes(recorded, forgery, no_unpickling):
    _forge(recorded, FORGERIES[forgery](recorded))
    recorded.load_refused(WeightsLabError, "manifest|cannot be restored|state dict|sampler|ledger|shape")
